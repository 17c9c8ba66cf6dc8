//! Entry points for the fuzz targets in `fuzz/`: the HTTP adapter's decoders of what callers and
//! upstreams send, driven from raw bytes, with the properties each must keep. Not an API; hidden
//! from the docs.

use std::sync::Arc;

use gatehouse_mask::{JsonMasker, JsonPath, Masker};

/// A request path: routing never panics, and a routed path is normal (no dot or empty
/// segments, no separator inside a segment) and routes to itself again.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(routed) = crate::path::route(&text) else { return };
    assert!(!routed.connection.is_empty());
    for s in &routed.segments {
        assert!(!s.is_empty() && s != "." && s != "..", "{s:?} in {text:?}");
        assert!(!s.contains('/') && !s.contains('\\'), "{s:?} in {text:?}");
    }
    assert!(routed.encoded.starts_with('/') && !routed.encoded.contains("//"), "{:?}", routed.encoded);
    let Ok(again) = crate::path::route(&format!("/c{}", routed.encoded)) else {
        panic!("the normalised path {:?} does not route again", routed.encoded)
    };
    assert_eq!((again.segments, again.encoded), (routed.segments, routed.encoded));
}

/// A response body masked as JSON, in two chunks cut where the input says: never panics, the
/// same output and counts however it is cut, and the output is JSON when the input was.
pub fn json(data: &[u8], masker: &Arc<Masker>) {
    let Some((&cut, body)) = data.split_first() else { return };
    let rules = ["$..card", "$.items[*].secret"].iter().filter_map(|p| JsonPath::parse(p).ok()).collect();
    let json = JsonMasker::new(Some(masker.clone()), rules);
    let whole = json.mask(body);
    let cut = usize::from(cut) * body.len() / 255;
    let mut stream = json.stream();
    let mut out = Vec::new();
    let split = stream
        .push(&body[..cut], &mut out)
        .and_then(|()| stream.push(&body[cut..], &mut out))
        .and_then(|()| stream.finish(&mut out));
    match (whole, split) {
        (Ok((expected, tally)), Ok(split_tally)) => {
            assert_eq!(expected, out, "the output depends on where the body was cut");
            assert_eq!(tally.total(), split_tally.total());
            if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
                assert!(serde_json::from_slice::<serde_json::Value>(&out).is_ok(), "masked JSON is not JSON");
            }
        }
        (Err(_), Err(_)) => {}
        (whole, split) => panic!("cut at {cut}: whole {:?}, split {:?}", whole.map(|_| ()), split.map(|_| ())),
    }
}
