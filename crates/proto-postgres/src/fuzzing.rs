//! Entry points for the fuzz targets in `fuzz/`: every decoder the relay runs on what callers and
//! the resource send, driven from raw bytes. Not an API; hidden from the docs.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use gatehouse_mask::Masker;

use crate::extended::{
    bind_message, bind_statement, execute_message, parameter_description, parse_message, target_message,
};
use crate::masking::{ColumnMask, Tally};
use crate::{Column, read_backend, read_message, read_startup};

/// Runs a future over an in-memory reader to completion: reading a byte slice never waits.
fn now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// What a caller sends: a startup packet, then messages, each decoded as the relay would.
pub fn frontend(data: &[u8]) {
    let mut input = data;
    // SSL and GSS requests come first, answered with one byte; then the startup packet.
    loop {
        match now(read_startup(&mut input, crate::MAX_STARTUP_LEN)) {
            Some(Ok(crate::Startup::Startup { .. })) => break,
            Some(Ok(crate::Startup::Ssl | crate::Startup::GssEnc)) => {}
            _ => return,
        }
    }
    while let Some(Ok(m)) = now(read_message(&mut input, 1 << 20)) {
        let body = m.body();
        match m.tag() {
            b'Q' => {
                let _ = m.query_text();
            }
            b'p' => {
                let _ = m.password();
            }
            b'P' => {
                let _ = parse_message(body);
            }
            b'B' => {
                let _ = bind_statement(body);
                for types in [&[][..], &[23, 25, 1700, 16, 17, 1114][..]] {
                    let _ = bind_message(body, types);
                }
            }
            b'E' => {
                let _ = execute_message(body);
            }
            b'D' | b'C' => {
                let _ = target_message(body);
            }
            _ => {}
        }
    }
}

/// What the resource sends: frames, their accessors, and masking of every message that carries
/// values, as the relay masks them.
pub fn backend(data: &[u8], masker: &Masker) {
    // A captured session starts with the one-byte answer to the caller's SSL request.
    let mut input = match data {
        [b'N' | b'S', b'R', ..] => &data[1..],
        _ => data,
    };
    let mut columns: Option<Vec<Column>> = None;
    while let Some(Ok(frame)) = now(read_backend(&mut input, 1 << 20)) {
        let body = frame.body();
        let mut tally = Tally::default();
        match frame.tag() {
            b'T' => columns = frame.row_description().ok(),
            b'D' => {
                let _ = frame.data_row_columns();
                let n = columns.as_ref().map_or(4, Vec::len);
                for plan in [ColumnMask::Detect, ColumnMask::Whole, ColumnMask::Clear] {
                    let plan = vec![plan; n];
                    let _ = crate::masking::data_row(body, columns.as_deref(), &plan, Some(masker), &mut tally);
                }
            }
            b'E' | b'N' => {
                let _ = frame.error_fields();
                let _ = crate::masking::error_fields(frame.tag(), body, masker);
            }
            b'A' => {
                let _ = crate::masking::notification(body, masker);
            }
            b'd' => {
                let _ = crate::masking::copy_data(body, masker, &mut tally);
            }
            b't' => {
                let _ = parameter_description(body);
            }
            b'C' => {
                let _ = frame.command_tag();
            }
            b'Z' => {
                let _ = frame.ready_status();
            }
            b'S' => {
                let _ = frame.parameter_status();
            }
            b'K' => {
                let _ = frame.backend_key();
            }
            _ => {}
        }
    }
}

/// The SQL classifier (PostgreSQL's own parser underneath) and the COPY reader, on any text.
pub fn sql(data: &[u8], rules: &gatehouse_sql::Rules) {
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = gatehouse_sql::classify_uncached(sql, rules);
        let _ = gatehouse_sql::copy_out(sql);
    }
}

/// The masker on any text: it never panics, masking is stable (masking masked text changes
/// nothing), and nothing a detector finds survives. Panics when a property fails.
pub fn mask(data: &[u8], masker: &Masker) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let once = masker.mask(text).text().to_string();
    let twice = masker.mask(&once).text().to_string();
    assert_eq!(once, twice, "masking is not stable");
    assert!(masker.find(&once).is_empty(), "a detectable value survived masking: {once:?}");
}
