//! Property tests of the decoders the relay runs on what callers and the resource send: they
//! never panic on arbitrary bytes, read back what a valid message carries, and the frame reader
//! yields exactly the frames sent however the stream is cut.

use bytes::Bytes;
use proptest::prelude::*;

use crate::extended::{
    bind_message, bind_statement, execute_message, parameter_description, parse_message, target_message,
};
use crate::{BackendFrame, FrameReader};

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A parameter of a generated `Bind`: NULL, text, or binary bytes.
fn param() -> impl Strategy<Value = Option<(bool, Vec<u8>)>> {
    prop_oneof![
        Just(None),
        "[a-zA-Z0-9 éü$'\"]{0,40}".prop_map(|s| Some((false, s.into_bytes()))),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Some((true, b))),
    ]
}

fn bind_body(portal: &str, statement: &str, params: &[Option<(bool, Vec<u8>)>], results: &[i16]) -> Vec<u8> {
    let mut body = portal.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(statement.as_bytes());
    body.push(0);
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        let binary = p.as_ref().is_some_and(|(b, _)| *b);
        body.extend_from_slice(&i16::from(binary).to_be_bytes());
    }
    body.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        match p {
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
            Some((_, v)) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
        }
    }
    body.extend_from_slice(&(results.len() as i16).to_be_bytes());
    for r in results {
        body.extend_from_slice(&r.to_be_bytes());
    }
    body
}

proptest! {
    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..200),
                                               types in proptest::collection::vec(any::<u32>(), 0..6)) {
        let _ = parse_message(&body);
        let _ = bind_message(&body, &types);
        let _ = bind_statement(&body);
        let _ = execute_message(&body);
        let _ = target_message(&body);
        let _ = parameter_description(&body);
        for tag in [b'T', b'E', b'C', b'D', b'Z', b'S', b'K'] {
            if let Ok(f) = BackendFrame::from_raw(Bytes::from(frame(tag, &body))) {
                let _ = f.row_description();
                let _ = f.error_fields();
                let _ = f.command_tag();
                let _ = f.data_row_columns();
                let _ = f.ready_status();
                let _ = f.parameter_status();
                let _ = f.backend_key();
            }
        }
    }

    #[test]
    fn a_valid_bind_reads_back(portal in "[a-z0-9_]{0,10}", statement in "[a-z0-9_]{0,10}",
                               params in proptest::collection::vec(param(), 0..8),
                               results in proptest::collection::vec(0i16..2, 0..4)) {
        let body = bind_body(&portal, &statement, &params, &results);
        let bind = bind_message(&body, &[]).unwrap();
        prop_assert_eq!(&bind.portal, &portal);
        prop_assert_eq!(bind_statement(&body).unwrap(), statement);
        prop_assert_eq!(&bind.result_formats, &results);
        prop_assert_eq!(bind.params.len(), params.len());
        for (shown, sent) in bind.params.iter().zip(&params) {
            match sent {
                None => prop_assert_eq!(shown.as_str(), "null"),
                Some((false, text)) => prop_assert_eq!(shown.as_bytes(), &text[..]),
                Some((true, bytes)) => {
                    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    prop_assert_eq!(shown, &format!("\\x{hex}"));
                }
            }
        }
        // Cut anywhere, it is an error, never a panic or a wrong read.
        for cut in 0..body.len() {
            prop_assert!(bind_message(&body[..cut], &[]).is_err());
        }
    }

    #[test]
    fn the_frame_reader_yields_the_frames_however_the_stream_is_cut(
        bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 1..12),
        cuts in proptest::collection::vec(1usize..97, 1..40),
    ) {
        let frames: Vec<Vec<u8>> = bodies.iter().enumerate().map(|(i, b)| frame(b'A' + (i % 26) as u8, b)).collect();
        let stream: Vec<u8> = frames.concat();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let read = rt.block_on(async move {
            use tokio::io::AsyncWriteExt;
            let (mut writer, reader) = tokio::io::duplex(64);
            let feeder = tokio::spawn(async move {
                let mut at = 0;
                let mut i = 0;
                while at < stream.len() {
                    let n = cuts[i % cuts.len()].min(stream.len() - at);
                    writer.write_all(&stream[at..at + n]).await.unwrap();
                    at += n;
                    i += 1;
                }
            });
            let mut reader = FrameReader::new(reader, 1 << 20);
            let mut got = Vec::new();
            loop {
                match reader.next().await {
                    Ok(f) => got.push(f.to_vec()),
                    Err(crate::WireError::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            feeder.await.unwrap();
            got
        });
        prop_assert_eq!(read, frames);
    }
}

/// A value of a generated row: NULL, plain text, or text around an email address.
fn row_value() -> impl Strategy<Value = Option<(String, Option<String>)>> {
    prop_oneof![
        Just(None),
        "[a-z0-9 ,.;]{0,20}".prop_map(|t| Some((t, None))),
        ("[a-z]{2,8}", "[a-z]{2,8}", "[a-z ]{0,6}", "[ a-z]{0,6}").prop_map(|(user, domain, before, after)| {
            let email = format!("{user}@{domain}.com");
            Some((format!("{before} {email} {after}"), Some(email)))
        }),
    ]
}

proptest! {
    #[test]
    fn masked_rows_keep_valid_framing_and_never_carry_an_address(values in proptest::collection::vec(row_value(), 0..8),
                                                                 binary in any::<bool>()) {
        let masker = gatehouse_mask::Masker::new(&[gatehouse_mask::Detector::Email], &[]).unwrap();
        let columns: Vec<crate::Column> = (0..values.len())
            .map(|i| crate::Column {
                name: format!("c{i}"),
                table_oid: 0,
                column_number: 0,
                type_oid: 25,
                type_size: -1,
                type_modifier: -1,
                format: i16::from(binary),
            })
            .collect();
        let mut body = (values.len() as i16).to_be_bytes().to_vec();
        for v in &values {
            match v {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some((text, _)) => {
                    body.extend_from_slice(&(text.len() as i32).to_be_bytes());
                    body.extend_from_slice(text.as_bytes());
                }
            }
        }
        let mut tally = crate::masking::Tally::new();
        let out = crate::masking::data_row(&body, Some(&columns), &[], Some(&masker), &mut tally).unwrap();
        let emails: Vec<&String> = values.iter().flatten().filter_map(|(_, e)| e.as_ref()).collect();
        match out {
            None => prop_assert!(emails.is_empty(), "unchanged although it held {emails:?}"),
            Some(frame) => {
                let frame = BackendFrame::from_raw(frame).unwrap();
                prop_assert_eq!(frame.tag(), b'D');
                prop_assert_eq!(usize::from(frame.data_row_columns().unwrap()), values.len());
                // Walk the values: every length is consistent and no address survived.
                let b = frame.body();
                let mut at = 2;
                for v in &values {
                    let len = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                    at += 4;
                    if len < 0 {
                        prop_assert!(v.is_none());
                        continue;
                    }
                    let text = std::str::from_utf8(&b[at..at + len as usize]).unwrap();
                    at += len as usize;
                    for email in &emails {
                        prop_assert!(!text.contains(email.as_str()), "{email} survived in {text:?}");
                    }
                }
                prop_assert_eq!(at, b.len());
                let counted: u64 = tally.values().flat_map(|d| d.values()).sum();
                prop_assert_eq!(counted as usize, emails.len());
            }
        }
    }
}

proptest! {
    #[test]
    fn masking_never_panics_on_arbitrary_messages(body in proptest::collection::vec(any::<u8>(), 0..200),
                                                  types in proptest::collection::vec(
                                                      prop_oneof![Just(25u32), Just(1009), Just(3802), Just(3807),
                                                                  Just(1700), Just(20), Just(2950), Just(0), any::<u32>()],
                                                      0..6),
                                                  binary in any::<bool>()) {
        let masker = gatehouse_mask::Masker::builtin().unwrap();
        let columns: Vec<crate::Column> = types
            .iter()
            .map(|t| crate::Column {
                name: "c".into(),
                table_oid: 0,
                column_number: 0,
                type_oid: *t,
                type_size: -1,
                type_modifier: -1,
                format: i16::from(binary),
            })
            .collect();
        let mut tally = crate::masking::Tally::new();
        // A row out of arbitrary bytes, and one with valid framing around arbitrary values.
        if let Ok(Some(row)) = crate::masking::data_row(&body, Some(&columns), &[], Some(&masker), &mut tally) {
            prop_assert!(BackendFrame::from_raw(row).is_ok());
        }
        let mut framed = (types.len() as i16).to_be_bytes().to_vec();
        for chunk in body.chunks(body.len() / types.len().max(1) + 1).take(types.len()) {
            framed.extend_from_slice(&(chunk.len() as i32).to_be_bytes());
            framed.extend_from_slice(chunk);
        }
        for _ in body.chunks(body.len() / types.len().max(1) + 1).take(types.len()).count()..types.len() {
            framed.extend_from_slice(&(-1i32).to_be_bytes());
        }
        let row = crate::masking::data_row(&framed, Some(&columns), &[], Some(&masker), &mut tally);
        prop_assert!(row.is_ok(), "a well-framed row is never refused");
        if let Ok(Some(row)) = row {
            let frame = BackendFrame::from_raw(row).unwrap();
            prop_assert_eq!(usize::from(frame.data_row_columns().unwrap()), types.len());
        }
        let _ = crate::masking::error_fields(b'E', &body, &masker);
        let _ = crate::masking::notification(&body, &masker);
        let _ = crate::masking::copy_data(&body, &masker, &mut tally);
    }
}
