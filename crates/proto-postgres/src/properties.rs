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
