//! Unit tests of framing and builders, without a server.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, ReadBuf};

use crate::messages::{self, Severity};
use crate::*;

const MAX: usize = 1024 * 1024;

fn startup_bytes(params: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    frontend::startup_message(params.iter().copied(), &mut buf).unwrap();
    buf.to_vec()
}

/// A raw startup packet: length, then `body`.
fn packet(body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

async fn startup(bytes: &[u8]) -> Result<Startup, WireError> {
    let mut stream = bytes;
    let result = read_startup(&mut stream, MAX).await;
    if result.is_ok() {
        assert!(stream.is_empty(), "read_startup left {} bytes unread", stream.len());
    }
    result
}

async fn message(bytes: &[u8], max_len: usize) -> Result<FrontendMessage, WireError> {
    let mut stream = bytes;
    read_message(&mut stream, max_len).await
}

#[tokio::test]
async fn startup_requests_are_recognised() {
    let mut ssl = BytesMut::new();
    frontend::ssl_request(&mut ssl);
    assert_eq!(startup(&ssl).await.unwrap(), Startup::Ssl);
    assert_eq!(startup(&packet(&GSSENC_REQUEST_CODE.to_be_bytes())).await.unwrap(), Startup::GssEnc);
    let mut cancel = BytesMut::new();
    frontend::cancel_request(4242, -7, &mut cancel);
    let parsed = startup(&cancel).await.unwrap();
    assert_eq!(parsed, Startup::Cancel { pid: 4242, key: -7 });
    assert!(!format!("{parsed:?}").contains("-7"), "Debug shows the cancel key: {parsed:?}");
}

#[tokio::test]
async fn startup_message_parameters_in_order() {
    let bytes = startup_bytes(&[("user", "alice"), ("database", "shop"), ("application_name", "psql")]);
    let parsed = startup(&bytes).await.unwrap();
    let Startup::Startup { version, params } = &parsed else { panic!("{parsed:?}") };
    assert_eq!(*version, ProtocolVersion::V3_0);
    assert_eq!(
        params,
        &[
            ("user".to_owned(), "alice".to_owned()),
            ("database".to_owned(), "shop".to_owned()),
            ("application_name".to_owned(), "psql".to_owned())
        ]
    );
    assert_eq!(parsed.param("database"), Some("shop"));
    assert_eq!(parsed.param("options"), None);
    // No parameters at all is well-formed (the adapter decides that `user` is required).
    assert!(matches!(startup(&packet(&[0, 3, 0, 0, 0])).await.unwrap(), Startup::Startup { .. }));
}

#[tokio::test]
async fn other_protocol_versions_are_named() {
    for (major, minor) in [(2u16, 0u16), (3, 2), (4, 0)] {
        let code = (u32::from(major) << 16 | u32::from(minor)).to_be_bytes();
        let mut body = code.to_vec();
        body.extend_from_slice(b"user\0alice\0\0");
        let err = startup(&packet(&body)).await.unwrap_err();
        assert!(matches!(err, WireError::UnsupportedVersion(v) if v == ProtocolVersion { major, minor }), "{err}");
        assert!(err.to_string().contains(&format!("{major}.{minor}")), "{err}");
    }
}

#[tokio::test]
async fn startup_lengths_are_bounded() {
    // Too long: refused from the length prefix alone, whatever max_len says.
    let err = startup(&10_001i32.to_be_bytes()).await.unwrap_err();
    assert!(matches!(err, WireError::BadLength { len: 10_001, max: MAX_STARTUP_LEN, .. }), "{err}");
    let mut stream = &i32::MAX.to_be_bytes()[..];
    assert!(matches!(read_startup(&mut stream, usize::MAX).await, Err(WireError::BadLength { .. })));
    // A smaller max_len wins.
    let bytes = startup_bytes(&[("user", "alice")]);
    let mut stream = &bytes[..];
    assert!(matches!(read_startup(&mut stream, 12).await, Err(WireError::BadLength { .. })));
    // Too short, negative.
    for len in [0i32, 4, 7, -1, i32::MIN] {
        assert!(matches!(startup(&len.to_be_bytes()).await, Err(WireError::BadLength { .. })), "{len}");
    }
}

#[tokio::test]
async fn startup_truncation_and_garbage() {
    assert!(matches!(startup(&[]).await, Err(WireError::Closed)));
    assert!(matches!(startup(&[0, 0]).await, Err(WireError::Truncated)));
    let bytes = startup_bytes(&[("user", "alice")]);
    assert!(matches!(startup(&bytes[..bytes.len() - 1]).await, Err(WireError::Truncated)));
    let v3 = [0u8, 3, 0, 0];
    let cases: &[&[u8]] = &[
        b"user\0alice\0",        // no terminator
        b"user\0alice",          // value without NUL
        b"user\0",               // name without value
        b"user\0alice\0\0junk",  // bytes after the terminator
        b"user\0a\0user\0b\0\0", // duplicate
        b"us\xffer\0alice\0\0",  // not UTF-8
        b"user\0al\xc3ice\0\0",  // not UTF-8 either
    ];
    for case in cases {
        let mut body = v3.to_vec();
        body.extend_from_slice(case);
        let err = startup(&packet(&body)).await.unwrap_err();
        assert!(matches!(err, WireError::Malformed { .. }), "{case:?}: {err}");
    }
    // SSLRequest/CancelRequest with a wrong length.
    let mut ssl = SSL_REQUEST_CODE.to_be_bytes().to_vec();
    ssl.push(0);
    assert!(matches!(startup(&packet(&ssl)).await, Err(WireError::Malformed { .. })));
    let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
    cancel.extend_from_slice(&[0, 0, 0, 1]);
    assert!(matches!(startup(&packet(&cancel)).await, Err(WireError::Malformed { .. })));
}

#[tokio::test]
async fn query_and_password_messages() {
    let mut buf = BytesMut::new();
    frontend::query("SELECT 'héllo'", &mut buf).unwrap();
    frontend::password_message(b"s3cret", &mut buf).unwrap();
    let all = buf.freeze();
    let mut stream = &all[..];
    let q = read_message(&mut stream, MAX).await.unwrap();
    assert_eq!(q.tag(), b'Q');
    assert_eq!(q.query_text().unwrap(), "SELECT 'héllo'");
    assert_eq!(q.raw()[..], all[..q.raw().len()], "raw() is the message as received");
    assert!(matches!(q.password(), Err(WireError::UnexpectedTag { expected: b'p', got: b'Q' })));
    let p = read_message(&mut stream, MAX).await.unwrap();
    assert_eq!(p.password().unwrap(), "s3cret");
    assert!(!format!("{p:?}").contains("s3cret"), "Debug shows the password: {p:?}");
    assert!(matches!(read_message(&mut stream, MAX).await, Err(WireError::Closed)));

    let built = FrontendMessage::new(b'Q', b"SELECT 1\0").unwrap();
    assert_eq!(built.query_text().unwrap(), "SELECT 1");
    assert_eq!(built.body_bytes(), Bytes::from_static(b"SELECT 1\0"));
    assert_eq!(message(built.raw(), MAX).await.unwrap(), built);
}

#[tokio::test]
async fn query_text_is_strict() {
    for (body, why) in [
        (&b"SELECT 1"[..], "missing NUL"),
        (b"SELECT 1\0; DROP TABLE t\0", "interior NUL"),
        (b"SELECT '\xff'\0", "bad UTF-8"),
    ] {
        let m = FrontendMessage::new(b'Q', body).unwrap();
        assert!(matches!(m.query_text(), Err(WireError::Malformed { .. })), "{why}");
    }
    assert_eq!(FrontendMessage::new(b'Q', b"\0").unwrap().query_text().unwrap(), "");
}

#[tokio::test]
async fn message_lengths_are_bounded() {
    for len in [3i32, 0, -1, i32::MIN] {
        let mut bytes = vec![b'Q'];
        bytes.extend_from_slice(&len.to_be_bytes());
        assert!(matches!(message(&bytes, MAX).await, Err(WireError::BadLength { .. })), "{len}");
    }
    let mut bytes = vec![b'Q'];
    bytes.extend_from_slice(&((MAX + 1) as i32).to_be_bytes());
    let err = message(&bytes, MAX).await.unwrap_err();
    assert!(matches!(err, WireError::BadLength { min: 4, max: MAX, .. }), "{err}");
    // Exactly max_len is fine; a zero-length body too.
    let ok = FrontendMessage::new(b'Q', &[b'x'; 96]).unwrap();
    assert!(message(ok.raw(), 100).await.is_ok());
    assert!(matches!(message(ok.raw(), 99).await, Err(WireError::BadLength { .. })));
    assert_eq!(message(&[b'S', 0, 0, 0, 4], MAX).await.unwrap().body(), b"");
}

/// A reader that records the largest buffer it was offered: the frame reader's allocation.
struct Probe<'a> {
    data: &'a [u8],
    largest_offer: usize,
}

impl AsyncRead for Probe<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        self.largest_offer = self.largest_offer.max(buf.remaining());
        let n = self.data.len().min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn one_gib_length_prefix_allocates_nothing_of_that_size() {
    const GIB: i32 = 1 << 30;
    let mut bytes = vec![b'Q'];
    bytes.extend_from_slice(&GIB.to_be_bytes());
    bytes.extend_from_slice(b"SELECT");
    // With an ordinary limit it is refused from the prefix alone.
    let mut probe = Probe { data: &bytes, largest_offer: 0 };
    assert!(
        matches!(read_message(&mut probe, MAX).await, Err(WireError::BadLength { len, .. }) if len == i64::from(GIB))
    );
    assert!(probe.largest_offer <= 5, "offered {} bytes before refusing", probe.largest_offer);
    // Even with no limit at all, the buffer grows only with what arrives.
    let mut probe = Probe { data: &bytes, largest_offer: 0 };
    assert!(matches!(read_message(&mut probe, usize::MAX).await, Err(WireError::Truncated)));
    assert!(probe.largest_offer <= 64 * 1024, "offered {} bytes", probe.largest_offer);
    let mut probe = Probe { data: &bytes, largest_offer: 0 };
    assert!(matches!(read_backend(&mut probe, usize::MAX).await, Err(WireError::Truncated)));
    assert!(probe.largest_offer <= 64 * 1024, "offered {} bytes", probe.largest_offer);
}

#[tokio::test]
async fn truncation_is_distinct_from_close() {
    let full = FrontendMessage::new(b'Q', b"SELECT 1\0").unwrap();
    assert!(matches!(message(&[], MAX).await, Err(WireError::Closed)));
    for cut in 1..full.raw().len() {
        let err = message(&full.raw()[..cut], MAX).await.unwrap_err();
        assert!(matches!(err, WireError::Truncated), "cut at {cut}: {err}");
    }
}

#[test]
fn garbage_never_panics() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    rt.block_on(async {
        for _ in 0..5000 {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Half the time, make the length prefix plausible so bodies get parsed.
            if next() % 2 == 0 && bytes.len() >= 5 {
                let l = (bytes.len() - 1) as i32;
                bytes[1..5].copy_from_slice(&l.to_be_bytes());
            }
            let _ = startup(&bytes).await;
            if let Ok(m) = message(&bytes, 64).await {
                let _ = (m.query_text(), m.password());
            }
            let mut stream = &bytes[..];
            if let Ok(f) = read_backend(&mut stream, 64).await {
                let _ = (f.ready_status(), f.command_tag(), f.error_fields(), f.data_row_columns());
                let _ = (f.parameter_status(), f.backend_key());
            }
        }
    });
}

fn parse(bytes: &Bytes) -> Message {
    let mut buf = BytesMut::from(&bytes[..]);
    let message = Message::parse(&mut buf).unwrap().expect("a complete message");
    assert!(buf.is_empty(), "Message::parse left {} bytes", buf.len());
    message
}

fn fields(bytes: &Bytes) -> Vec<(u8, String)> {
    match parse(bytes) {
        Message::ErrorResponse(b) => b
            .fields()
            .map(|f| Ok((f.type_(), String::from_utf8_lossy(f.value_bytes()).into_owned())))
            .collect()
            .unwrap(),
        Message::NoticeResponse(b) => b
            .fields()
            .map(|f| Ok((f.type_(), String::from_utf8_lossy(f.value_bytes()).into_owned())))
            .collect()
            .unwrap(),
        _ => panic!("not an error or notice"),
    }
}

#[test]
fn builders_parse_back() {
    let err = messages::error_response(Severity::Error, "42501", "permission denied", Some("by policy"), Some("ask"));
    assert_eq!(
        fields(&err),
        vec![
            (b'S', "ERROR".into()),
            (b'V', "ERROR".into()),
            (b'C', "42501".into()),
            (b'M', "permission denied".into()),
            (b'D', "by policy".into()),
            (b'H', "ask".into()),
        ]
    );
    let notice = messages::notice_response(Severity::Notice, "00000", "held for review", None, None);
    assert!(matches!(parse(&notice), Message::NoticeResponse(_)));
    assert_eq!(fields(&notice).len(), 4);

    for (status, byte) in
        [(TransactionStatus::Idle, b'I'), (TransactionStatus::InTransaction, b'T'), (TransactionStatus::Failed, b'E')]
    {
        match parse(&messages::ready_for_query(status)) {
            Message::ReadyForQuery(b) => assert_eq!(b.status(), byte),
            _ => panic!("not ReadyForQuery"),
        }
    }
    assert!(matches!(parse(&messages::authentication_ok()), Message::AuthenticationOk));
    assert!(matches!(parse(&messages::authentication_cleartext_password()), Message::AuthenticationCleartextPassword));
    match parse(&messages::backend_key_data(1234, -99)) {
        Message::BackendKeyData(b) => assert_eq!((b.process_id(), b.secret_key()), (1234, -99)),
        _ => panic!("not BackendKeyData"),
    }
    match parse(&messages::parameter_status("server_version", "15.8")) {
        Message::ParameterStatus(b) => assert_eq!((b.name().unwrap(), b.value().unwrap()), ("server_version", "15.8")),
        _ => panic!("not ParameterStatus"),
    }
    match parse(&messages::command_complete("SELECT 3")) {
        Message::CommandComplete(b) => assert_eq!(b.tag().unwrap(), "SELECT 3"),
        _ => panic!("not CommandComplete"),
    }
    assert!(matches!(parse(&messages::empty_query_response()), Message::EmptyQueryResponse));
    assert_eq!(&messages::ssl_response(true)[..], b"S");
    assert_eq!(&messages::ssl_response(false)[..], b"N");
}

#[test]
fn builders_keep_framing_valid_whatever_the_text() {
    let err = messages::error_response(Severity::Fatal, "bad", "a\0b", Some("\0"), None);
    let f = fields(&err);
    assert_eq!(f[2], (b'C', "XX000".into()), "invalid SQLSTATE replaced");
    assert_eq!(f[3], (b'M', "a\u{FFFD}b".into()));
    assert_eq!(f[4], (b'D', "\u{FFFD}".into()));
    // A huge, multi-byte message is cut on a character boundary and stays parseable.
    let long = "é".repeat(100_000);
    let err = messages::error_response(Severity::Error, "XX000", &long, None, None);
    let message = fields(&err).into_iter().find(|(k, _)| *k == b'M').unwrap().1;
    assert!(message.len() <= messages::MAX_FIELD_LEN && message.len() > 60_000);
    match parse(&messages::command_complete("x\0y")) {
        Message::CommandComplete(b) => assert_eq!(b.tag().unwrap(), "x\u{FFFD}y"),
        _ => panic!("not CommandComplete"),
    }
}

#[tokio::test]
async fn backend_frames_and_accessors() {
    let mut stream_bytes = BytesMut::new();
    stream_bytes.put(messages::parameter_status("TimeZone", "UTC"));
    stream_bytes.put(messages::backend_key_data(77, 88));
    // DataRow with two columns: "1" and NULL.
    stream_bytes.put_slice(&[b'D', 0, 0, 0, 15, 0, 2, 0, 0, 0, 1, b'1', 0xff, 0xff, 0xff, 0xff]);
    stream_bytes.put(messages::command_complete("SELECT 1"));
    stream_bytes.put(messages::error_response(Severity::Error, "57014", "canceling statement", Some("d"), None));
    stream_bytes.put(messages::ready_for_query(TransactionStatus::Failed));
    let all = stream_bytes.freeze();
    let mut stream = &all[..];
    let mut frames = Vec::new();
    loop {
        match read_backend(&mut stream, MAX).await {
            Ok(f) => frames.push(f),
            Err(WireError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(frames.iter().map(|f| f.tag()).collect::<Vec<_>>(), b"SKDCEZ");
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.raw().to_vec()).collect();
    assert_eq!(joined, all.to_vec(), "frames are the original bytes");
    assert_eq!(frames[0].parameter_status().unwrap(), ("TimeZone", "UTC"));
    assert_eq!(frames[1].backend_key().unwrap(), BackendKey { pid: 77, key: 88 });
    assert_eq!(frames[2].data_row_columns().unwrap(), 2);
    assert_eq!(frames[3].command_tag().unwrap(), "SELECT 1");
    let e = frames[4].error_fields().unwrap();
    assert_eq!((e.severity.as_str(), e.code.as_str(), e.message.as_str()), ("ERROR", "57014", "canceling statement"));
    assert_eq!(e.detail.as_deref(), Some("d"));
    assert_eq!(e.get(b'C'), Some("57014"));
    assert_eq!(frames[5].ready_status().unwrap(), TransactionStatus::Failed);
    assert!(matches!(frames[5].command_tag(), Err(WireError::UnexpectedTag { expected: b'C', got: b'Z' })));
    assert!(matches!(frames[3].error_fields(), Err(WireError::UnexpectedTag { .. })));
    assert_eq!(BackendFrame::from_raw(frames[3].raw().clone()).unwrap(), frames[3]);
    assert!(BackendFrame::from_raw(Bytes::from_static(b"Z\0\0\0\x06I")).is_err());
}

#[test]
fn malformed_backend_bodies_are_errors() {
    let frame = |tag: u8, body: &[u8]| {
        let mut raw = vec![tag];
        raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        raw.extend_from_slice(body);
        BackendFrame::from_raw(Bytes::from(raw)).unwrap()
    };
    assert!(frame(b'Z', b"X").ready_status().is_err());
    assert!(frame(b'Z', b"II").ready_status().is_err());
    assert!(frame(b'C', b"SELECT 1").command_tag().is_err());
    assert!(frame(b'D', b"\x00").data_row_columns().is_err());
    assert!(frame(b'D', b"\xff\xff").data_row_columns().is_err());
    assert!(frame(b'E', b"Mboom\0").error_fields().is_err(), "missing terminator");
    assert!(frame(b'E', b"Mboom").error_fields().is_err());
    assert!(frame(b'E', b"\0extra").error_fields().is_err());
    assert!(frame(b'K', b"1234567").backend_key().is_err());
    // Only S (localised) severity: used as the severity.
    assert_eq!(frame(b'N', b"SNOTICE\0Mhi\0\0").error_fields().unwrap().severity, "NOTICE");
}

fn row_description_frame(columns: &[(&str, u32, i16)]) -> BackendFrame {
    let mut body = (columns.len() as i16).to_be_bytes().to_vec();
    for (name, type_oid, format) in columns {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(&16384u32.to_be_bytes());
        body.extend_from_slice(&2i16.to_be_bytes());
        body.extend_from_slice(&type_oid.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes());
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.extend_from_slice(&format.to_be_bytes());
    }
    let mut raw = vec![b'T'];
    raw.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    raw.extend_from_slice(&body);
    BackendFrame::from_raw(Bytes::from(raw)).unwrap()
}

#[test]
fn row_descriptions_parse_and_malformed_ones_are_errors() {
    let f = row_description_frame(&[("id", 23, 0), ("émail", 25, 1)]);
    let columns = f.row_description().unwrap();
    assert_eq!(columns.len(), 2);
    assert_eq!(
        columns[1],
        crate::Column {
            name: "émail".into(),
            table_oid: 16384,
            column_number: 2,
            type_oid: 25,
            type_size: -1,
            type_modifier: -1,
            format: 1
        }
    );
    assert!(row_description_frame(&[]).row_description().unwrap().is_empty());
    // Every truncation of a valid body, a negative count and trailing bytes are refused.
    let raw = f.raw().clone();
    for cut in 7..raw.len() {
        let mut short = raw[..cut].to_vec();
        let len = (cut - 1) as i32;
        short[1..5].copy_from_slice(&len.to_be_bytes());
        let frame = BackendFrame::from_raw(Bytes::from(short)).unwrap();
        assert!(frame.row_description().is_err(), "cut at {cut}");
    }
    let mut negative = raw.to_vec();
    negative[5..7].copy_from_slice(&(-1i16).to_be_bytes());
    assert!(BackendFrame::from_raw(Bytes::from(negative)).unwrap().row_description().is_err());
    let mut trailing = raw.to_vec();
    trailing.push(0);
    let len = (trailing.len() - 1) as i32;
    trailing[1..5].copy_from_slice(&len.to_be_bytes());
    assert!(BackendFrame::from_raw(Bytes::from(trailing)).unwrap().row_description().is_err());
    assert!(matches!(f.command_tag(), Err(WireError::UnexpectedTag { .. })));
}

#[test]
fn a_portal_knows_its_columns_in_the_formats_bind_chose() {
    use crate::extended::{Described, Portal, Prepared};
    use std::sync::Arc;
    let prepared = Arc::new(Prepared::new(vec![], false));
    let described = row_description_frame(&[("a", 23, 0), ("b", 25, 0), ("c", 17, 0)]).row_description().unwrap();
    let formats = |portal: &Portal| portal.columns().map(|c| c.iter().map(|c| c.format).collect::<Vec<_>>());
    let all_binary = Portal::new(prepared.clone(), vec![], None, vec![1]);
    let each = Portal::new(prepared.clone(), vec![], None, vec![0, 1, 0]);
    let text = Portal::new(prepared.clone(), vec![], None, vec![]);
    assert!(all_binary.shape_unknown());
    assert_eq!(formats(&all_binary), None);
    Described::Statement(prepared.clone()).answered(described);
    assert!(!all_binary.shape_unknown());
    assert_eq!(formats(&all_binary), Some(vec![1, 1, 1]));
    assert_eq!(formats(&each), Some(vec![0, 1, 0]));
    assert_eq!(formats(&text), Some(vec![0, 0, 0]));
    // A Describe of the portal itself wins over its statement's.
    let own = Arc::new(Portal::new(prepared, vec![], None, vec![]));
    Described::Portal(own.clone()).answered(row_description_frame(&[("x", 23, 1)]).row_description().unwrap());
    assert_eq!(own.columns().unwrap()[0].name, "x");
}

#[tokio::test]
async fn frame_reader_is_cancel_safe_and_bounded() {
    use tokio::io::AsyncWriteExt;
    let (mut writer, reader) = tokio::io::duplex(64);
    let mut frames = crate::FrameReader::new(reader, 1 << 20);
    let query = frontend_query_bytes("SELECT 'a long enough statement to span several writes'");
    // Half a frame, then the wait is abandoned (as select! does when another branch wins).
    writer.write_all(&query[..7]).await.unwrap();
    let abandoned = tokio::time::timeout(std::time::Duration::from_millis(50), frames.next()).await;
    assert!(abandoned.is_err(), "no frame yet");
    assert!(!frames.has_frame());
    // The rest, and a second frame: both come out whole, in order.
    let task = tokio::spawn(async move {
        writer.write_all(&query[7..]).await.unwrap();
        writer.write_all(&[b'S', 0, 0, 0, 4]).await.unwrap();
        writer.write_all(&[b'X', 0, 0, 0, 4, b'Q']).await.unwrap();
        query
    });
    let first = frames.next().await.unwrap();
    let query = task.await.unwrap();
    assert_eq!(first, query);
    assert_eq!(&frames.next().await.unwrap()[..], &[b'S', 0, 0, 0, 4]);
    assert!(frames.has_frame(), "the Terminate is buffered already");
    assert_eq!(&frames.next().await.unwrap()[..], &[b'X', 0, 0, 0, 4]);
    // The stream ends after one byte of a frame: truncated, not closed.
    assert!(matches!(frames.next().await, Err(WireError::Truncated)));

    // A length above the limit is refused from its header alone.
    let (mut writer, reader) = tokio::io::duplex(64);
    let mut frames = crate::FrameReader::new(reader, 1024);
    writer.write_all(&[b'Q', 0x40, 0, 0, 0]).await.unwrap();
    assert!(matches!(frames.next().await, Err(WireError::BadLength { .. })));
    // A clean end between frames is Closed.
    let (writer, reader) = tokio::io::duplex(64);
    drop(writer);
    assert!(matches!(crate::FrameReader::new(reader, 1024).next().await, Err(WireError::Closed)));
}

#[tokio::test]
async fn frame_reader_reads_frames_larger_than_its_chunk() {
    use tokio::io::AsyncWriteExt;
    let (mut writer, reader) = tokio::io::duplex(8 * 1024);
    let mut frames = crate::FrameReader::new(reader, 1 << 20);
    let big = frontend_query_bytes(&"x".repeat(300_000));
    let sent = big.clone();
    tokio::spawn(async move { writer.write_all(&sent).await.unwrap() });
    assert_eq!(frames.next().await.unwrap(), big);
}

fn frontend_query_bytes(sql: &str) -> Bytes {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    Bytes::from(packet_with_tag(b'Q', &body))
}

fn packet_with_tag(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}
