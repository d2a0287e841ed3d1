//! XML request bodies (DeleteObjects, CompleteMultipartUpload, bucket and object
//! configurations) are held back whole and checked before any byte reaches the backend.
//!
//! Backends parse these bodies themselves, some recursively: a 100,000-deep `<Object>` or
//! `<Part>` kills Garage 2.5 with a stack overflow. Every chain (with or without `crypto`)
//! therefore collects such a body (bounded), checks it with a streaming reader (a depth
//! counter, no tree) and forwards it only once it passed:
//!
//! - DeleteObjects and CompleteMultipartUpload against S3's schemas: element names and
//!   nesting, at most 1,000 objects to delete, 1..10,000 parts, text only in leaves;
//! - every other XML body (PutBucketLifecycle, PutObjectTagging, ...) for well-formedness,
//!   one root, a bounded depth and size.
//!
//! A refused body answers 400 MalformedXML, as S3 does, and the backend receives a short
//! request it discards.

use bytes::{Bytes, BytesMut};
use http::Method;
use quick_xml::events::Event;
use quick_xml::Reader;

use crate::clients::Grant;
use crate::error::{s3err, S3Error, S3ErrorCode};
use crate::request::{Operation, S3Request};

/// One element of a schema; `children` empty means a text-only leaf.
pub struct Element {
    pub name: &'static str,
    pub min: usize,
    pub max: usize,
    pub children: &'static [Element],
}

const fn leaf(name: &'static str) -> Element {
    Element { name, min: 0, max: 1, children: &[] }
}

/// Most objects one DeleteObjects may name (S3's limit).
pub const MAX_DELETE_OBJECTS: usize = 1000;
/// Most parts of one multipart upload.
pub const MAX_PARTS: usize = 10_000;

/// `Delete` (DeleteObjects): `Object` 1..1000 with exactly one `Key`, optional `Quiet`.
pub static DELETE: Element = Element {
    name: "Delete",
    min: 1,
    max: 1,
    children: &[
        Element {
            name: "Object",
            min: 1,
            max: MAX_DELETE_OBJECTS,
            children: &[
                Element { name: "Key", min: 1, max: 1, children: &[] },
                leaf("VersionId"),
                // Conditional deletes (S3, 2024).
                leaf("ETag"),
                leaf("LastModifiedTime"),
                leaf("Size"),
            ],
        },
        leaf("Quiet"),
    ],
};

/// `CompleteMultipartUpload`: `Part` 1..10000, each with one `PartNumber`.
pub static COMPLETE: Element = Element {
    name: "CompleteMultipartUpload",
    min: 1,
    max: 1,
    children: &[Element {
        name: "Part",
        min: 1,
        max: MAX_PARTS,
        children: &[
            Element { name: "PartNumber", min: 1, max: 1, children: &[] },
            leaf("ETag"),
            leaf("ChecksumCRC32"),
            leaf("ChecksumCRC32C"),
            leaf("ChecksumCRC64NVME"),
            leaf("ChecksumSHA1"),
            leaf("ChecksumSHA256"),
        ],
    }],
};

/// How a body is judged.
#[derive(Clone, Copy)]
pub enum Rule {
    /// Against a schema.
    Schema(&'static Element),
    /// Any well-formed XML document up to this depth (the deepest S3 configuration,
    /// e.g. `LifecycleConfiguration/Rule/Filter/And/Tag/Key`, has 6 levels), or no body.
    Generic { max_depth: usize },
}

/// A body held back until its end, and how it will be judged.
pub struct HeldBody {
    rule: Rule,
    limit: usize,
    buf: BytesMut,
    /// A client limited to key prefixes: every key a DeleteObjects names must be in them.
    keys_within: Option<Grant>,
}

/// Largest bodies collected. DeleteObjects: 1,000 keys of up to 1,024 bytes, escaped, with
/// version ids; Complete: 10,000 parts with ETags and checksums; configurations: S3 limits
/// each to far less (a lifecycle of 1,000 rules).
const DELETE_LIMIT: usize = 8 << 20;
const COMPLETE_LIMIT: usize = 4 << 20;
const GENERIC_LIMIT: usize = 2 << 20;
const GENERIC_DEPTH: usize = 16;

/// Sub-resources whose PUT body is XML (a bucket policy is JSON, and not checked here).
fn xml_subresource(k: &str) -> bool {
    matches!(
        k,
        "versioning" | "acl" | "cors" | "lifecycle" | "tagging" | "encryption" | "object-lock" | "ownershipControls"
            | "publicAccessBlock" | "notification" | "logging" | "website" | "replication" | "accelerate"
            | "requestPayment" | "analytics" | "metrics" | "inventory" | "intelligent-tiering" | "retention"
            | "legal-hold"
    )
}

impl HeldBody {
    /// The check an operation's body needs, if any. DeleteObjects without a body is
    /// refused at once (the request would reach the backend before an empty body phase).
    pub fn for_request(s3: &S3Request) -> Result<Option<HeldBody>, S3Error> {
        let (rule, limit) = match s3.op {
            Operation::DeleteObjects => (Rule::Schema(&DELETE), DELETE_LIMIT),
            Operation::CompleteMultipartUpload => (Rule::Schema(&COMPLETE), COMPLETE_LIMIT),
            Operation::CreateBucket => (Rule::Generic { max_depth: GENERIC_DEPTH }, GENERIC_LIMIT),
            // RestoreRequest (archive tiers): a configuration-sized document.
            Operation::RestoreObject => (Rule::Generic { max_depth: GENERIC_DEPTH }, GENERIC_LIMIT),
            Operation::BucketOther | Operation::ObjectOther
                if s3.method == Method::PUT && s3.query.iter().any(|(k, _)| xml_subresource(k)) =>
            {
                (Rule::Generic { max_depth: GENERIC_DEPTH }, GENERIC_LIMIT)
            }
            _ => return Ok(None),
        };
        if matches!(rule, Rule::Schema(_)) && s3.content_length == Some(0) {
            return Err(malformed());
        }
        if s3.plaintext_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large(limit));
        }
        Ok(Some(HeldBody { rule, limit, buf: BytesMut::new(), keys_within: None }))
    }

    /// Refuses (AccessDenied) a DeleteObjects that names a key outside `grant`'s prefixes.
    pub fn keys_within(mut self, grant: Grant) -> Self {
        self.keys_within = Some(grant).filter(|g| !g.prefixes.is_empty());
        self
    }

    /// A new backend attempt replays the body from its start.
    pub fn restart(&mut self) {
        self.buf.clear();
    }

    /// Takes one piece of the body as it would go upstream; sends nothing until the end,
    /// then the whole body if it passed.
    pub fn hold(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<(), S3Error> {
        let piece = body.take().unwrap_or_default();
        if self.buf.len() + piece.len() > self.limit {
            return Err(too_large(self.limit));
        }
        if !end {
            self.buf.extend_from_slice(&piece);
            *body = Some(Bytes::new());
            return Ok(());
        }
        // A body that arrives whole at its end (the crypto filter collects the Complete body
        // first) is checked as it is, without another copy.
        let all = if self.buf.is_empty() {
            piece
        } else {
            self.buf.extend_from_slice(&piece);
            std::mem::take(&mut self.buf).freeze()
        };
        match self.rule {
            Rule::Generic { .. } if all.iter().all(u8::is_ascii_whitespace) => {}
            rule => check(rule, &all, |path, text| match &self.keys_within {
                Some(grant) if path.ends_with(&["Object", "Key"]) && !grant.allows_key(text) => Err(s3err(
                    S3ErrorCode::AccessDenied,
                    "Access Denied: this client may not reach that key",
                )
                .with_resource(format!("{}/{text}", grant.bucket))),
                _ => Ok(()),
            })?,
        }
        // A bodyless request stays bodyless (`None` ends the upstream body).
        *body = (!all.is_empty()).then_some(all);
        Ok(())
    }
}

pub fn malformed() -> S3Error {
    s3err(S3ErrorCode::MalformedXML, "The XML you provided was not well-formed or did not validate against our published schema")
}

fn too_large(limit: usize) -> S3Error {
    s3err(S3ErrorCode::MalformedXML, format!("The XML you provided is larger than the {} MiB the proxy accepts for this request", limit >> 20))
}

/// One open element while checking: its schema (none under a generic rule) and how many
/// of each child it holds so far.
struct Open {
    schema: Option<&'static Element>,
    counts: [usize; 8],
    text: String,
}

/// Checks `xml` against `rule` in one pass, with memory bounded by the schema's depth.
/// `on_end(path, text)` is called at the end of each schema element (path: element names
/// from the root; text: a leaf's text, empty otherwise), for callers that need values
/// (the parts of a Complete).
pub fn check(rule: Rule, xml: &[u8], mut on_end: impl FnMut(&[&'static str], &str) -> Result<(), S3Error>) -> Result<(), S3Error> {
    let mut r = Reader::from_reader(xml);
    r.config_mut().expand_empty_elements = true;
    r.config_mut().check_end_names = true;
    let (root, max_depth) = match rule {
        Rule::Schema(root) => (Some(root), depth_of(root)),
        Rule::Generic { max_depth } => (None, max_depth),
    };
    let mut stack: Vec<Open> = Vec::new();
    let mut path: Vec<&'static str> = Vec::new();
    let mut seen_root = false;
    loop {
        match r.read_event().map_err(|_| malformed())? {
            Event::Start(s) => {
                if stack.len() >= max_depth || (stack.is_empty() && seen_root) {
                    return Err(malformed());
                }
                for a in s.attributes().with_checks(true) {
                    a.map_err(|_| malformed())?;
                }
                let name = s.local_name();
                let schema = match (stack.last_mut(), root) {
                    (None, Some(root)) => Some(root).filter(|e| e.name.as_bytes() == name.as_ref()).ok_or_else(malformed).map(Some)?,
                    (None, None) => None,
                    (Some(parent), _) => match parent.schema {
                        Some(p) => {
                            let i = p.children.iter().position(|c| c.name.as_bytes() == name.as_ref()).ok_or_else(malformed)?;
                            parent.counts[i] += 1;
                            if parent.counts[i] > p.children[i].max {
                                return Err(malformed());
                            }
                            Some(&p.children[i])
                        }
                        None => None,
                    },
                };
                if let Some(e) = schema {
                    path.push(e.name);
                }
                seen_root = true;
                stack.push(Open { schema, counts: [0; 8], text: String::new() });
            }
            Event::End(_) => {
                let open = stack.pop().ok_or_else(malformed)?;
                if let Some(e) = open.schema {
                    if e.children.iter().zip(open.counts).any(|(c, n)| n < c.min) {
                        return Err(malformed());
                    }
                    on_end(&path, &open.text)?;
                    path.pop();
                }
            }
            Event::Text(t) => {
                let outside = stack.is_empty();
                let leaf = stack.last_mut().filter(|o| o.schema.is_some_and(|e| e.children.is_empty()));
                match leaf {
                    Some(open) => open.text.push_str(&t.unescape().map_err(|_| malformed())?),
                    // Elements that hold elements hold no text (and nothing lies around the root).
                    None if matches!(rule, Rule::Schema(_)) || outside => {
                        if !t.iter().all(u8::is_ascii_whitespace) {
                            return Err(malformed());
                        }
                    }
                    None => {
                        t.unescape().map_err(|_| malformed())?;
                    }
                }
            }
            Event::CData(c) => {
                let text = std::str::from_utf8(&c).map_err(|_| malformed())?;
                match stack.last_mut() {
                    Some(open) if open.schema.is_some_and(|e| e.children.is_empty()) => open.text.push_str(text),
                    Some(_) if matches!(rule, Rule::Generic { .. }) => {}
                    _ => return Err(malformed()),
                }
            }
            // The declaration only before the root; no DTD (entities), no processing instructions.
            Event::Decl(_) if !seen_root && stack.is_empty() => {}
            Event::Decl(_) | Event::DocType(_) | Event::PI(_) => return Err(malformed()),
            Event::Comment(_) => {}
            // Never emitted: expand_empty_elements turns `<a/>` into Start and End.
            Event::Empty(_) => return Err(malformed()),
            Event::Eof => break,
        }
    }
    if !seen_root || !stack.is_empty() {
        return Err(malformed());
    }
    Ok(())
}

/// Levels of a schema (the root is level 1).
fn depth_of(e: &Element) -> usize {
    1 + e.children.iter().map(depth_of).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(objects: usize) -> String {
        let mut s = String::from(r#"<?xml version="1.0" encoding="UTF-8"?><Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/">"#);
        for i in 0..objects {
            s.push_str(&format!("<Object><Key>k/{i} &amp; &lt;x&gt;</Key></Object>"));
        }
        s.push_str("<Quiet>true</Quiet></Delete>");
        s
    }

    fn ok(rule: Rule, xml: &str) -> bool {
        check(rule, xml.as_bytes(), |_, _| Ok(())).is_ok()
    }

    fn nested(name: &str, depth: usize) -> String {
        format!("{}{}", format!("<{name}>").repeat(depth), format!("</{name}>").repeat(depth))
    }

    #[test]
    fn real_delete_bodies_pass() {
        let del = Rule::Schema(&DELETE);
        assert!(ok(del, &delete(1)));
        assert!(ok(del, &delete(MAX_DELETE_OBJECTS)));
        // PBS: no namespace, no Quiet; boto3 with versions; pretty-printed; a prefix.
        assert!(ok(del, "<Delete><Object><Key>store/.chunks/ab/abcd</Key></Object></Delete>"));
        assert!(ok(del, "<Delete>\n  <Object>\n    <Key>a</Key>\n    <VersionId>3/L4kqtJl40Nr8X8gdRQBpUMLUo</VersionId>\n  </Object>\n  <Quiet>false</Quiet>\n</Delete>\n"));
        assert!(ok(del, r#"<s3:Delete xmlns:s3="http://s3.amazonaws.com/doc/2006-03-01/"><s3:Object><s3:Key>a</s3:Key></s3:Object></s3:Delete>"#));
        assert!(ok(del, "<Delete><Object><Key><![CDATA[a<b]]></Key><ETag>\"x\"</ETag><Size>3</Size></Object><!-- c --></Delete>"));
        assert!(ok(del, "<Delete><Object><Key></Key></Object></Delete>"), "an empty key is the backend's to judge");
    }

    #[test]
    fn delete_bodies_outside_the_schema_are_refused() {
        let del = Rule::Schema(&DELETE);
        for bad in [
            delete(MAX_DELETE_OBJECTS + 1),
            "<Delete></Delete>".into(),
            "<Delete><Quiet>true</Quiet></Delete>".into(),
            "<Delete><Object></Object></Delete>".into(),
            "<Delete><Object><Key>a</Key><Key>b</Key></Object></Delete>".into(),
            "<Delete><Object><Key>a</Key><Other/></Object></Delete>".into(),
            "<Delete><Object><Key>a<Key>b</Key></Key></Object></Delete>".into(),
            "<Delete>text<Object><Key>a</Key></Object></Delete>".into(),
            "<Delete><Object><Key>a</Key></Object></Delete><Delete/>".into(),
            "<Delete><Object><Key>a</Key></Object></Delete>trailing".into(),
            "<Delete><Object><Key>a</Key></Object>".into(),
            "<Delete><Object><Key>a</Key></Object></Delet>".into(),
            "<Delete><Object><Key>&bogus;</Key></Object></Delete>".into(),
            "<!DOCTYPE d [<!ENTITY a \"b\">]><Delete><Object><Key>&a;</Key></Object></Delete>".into(),
            "<Delete><Object><Key>a</Key></Object><Quiet>1</Quiet><Quiet>1</Quiet></Delete>".into(),
            "<CompleteMultipartUpload/>".into(),
            nested("Object", 100_000),
            format!("<Delete>{}</Delete>", nested("Object", 100_000)),
            String::new(),
            "garbage".into(),
        ] {
            assert!(!ok(del, &bad), "{}", &bad[..bad.len().min(200)]);
        }
    }

    #[test]
    fn complete_bodies() {
        let c = Rule::Schema(&COMPLETE);
        let good = r#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a"</ETag><PartNumber>1</PartNumber><ChecksumCRC32>7z4jdQ==</ChecksumCRC32></Part><Part><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>"#;
        let mut leaves = Vec::new();
        check(c, good.as_bytes(), |p, t| {
            leaves.push((p.join("/"), t.to_string()));
            Ok(())
        })
        .unwrap();
        assert_eq!(leaves[0], ("CompleteMultipartUpload/Part/ETag".to_string(), "\"a\"".to_string()));
        assert_eq!(leaves.iter().filter(|(p, _)| p.ends_with("PartNumber")).count(), 2);
        assert_eq!(leaves.iter().filter(|(p, _)| p.ends_with("/Part")).count(), 2);
        assert_eq!(leaves.last().unwrap().0, "CompleteMultipartUpload");
        for bad in [
            "<CompleteMultipartUpload></CompleteMultipartUpload>".to_string(),
            "<CompleteMultipartUpload><Part><ETag>a</ETag></Part></CompleteMultipartUpload>".into(),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><Part/></Part></CompleteMultipartUpload>".into(),
            format!("<CompleteMultipartUpload>{}</CompleteMultipartUpload>", nested("Part", 100_000)),
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber></Part>".into(),
        ] {
            assert!(!ok(c, &bad), "{}", &bad[..bad.len().min(200)]);
        }
    }

    #[test]
    fn generic_bodies_have_a_depth_limit() {
        let g = Rule::Generic { max_depth: GENERIC_DEPTH };
        assert!(ok(g, "<Tagging><TagSet><Tag><Key>a</Key><Value>b</Value></Tag></TagSet></Tagging>"));
        assert!(ok(g, "<LifecycleConfiguration><Rule><Filter><And><Tag><Key>k</Key></Tag></And></Filter></Rule></LifecycleConfiguration>"));
        assert!(ok(g, &nested("a", GENERIC_DEPTH)));
        assert!(!ok(g, &nested("a", GENERIC_DEPTH + 1)));
        assert!(!ok(g, &nested("a", 100_000)));
        assert!(!ok(g, "<a></b>"));
        assert!(!ok(g, "<a/><b/>"));
        assert!(!ok(g, "{\"json\": 1}"));
    }

    /// A client limited to a prefix may batch-delete its own keys, not a single other one
    /// (escaped names are compared as decoded).
    #[test]
    fn delete_objects_keys_must_lie_in_the_grant() {
        let grant = Grant::parse("b/host-a/").unwrap();
        let body = |keys: &[&str]| {
            let objs: String = keys.iter().map(|k| format!("<Object><Key>{k}</Key></Object>")).collect();
            Bytes::from(format!("<Delete>{objs}</Delete>"))
        };
        let run = |keys: &[&str]| {
            let s3_ok = HeldBody { rule: Rule::Schema(&DELETE), limit: 1 << 20, buf: BytesMut::new(), keys_within: None };
            let mut h = s3_ok.keys_within(grant.clone());
            h.hold(&mut Some(body(keys)), true)
        };
        assert!(run(&["host-a/1", "host-a/x/2"]).is_ok());
        assert_eq!(run(&["host-a/1", "host-b/2"]).unwrap_err().code, S3ErrorCode::AccessDenied);
        assert_eq!(run(&["host-&#97;/1"]).map_err(|e| e.code), Ok(()));
        assert_eq!(run(&["host-&#98;/1"]).unwrap_err().code, S3ErrorCode::AccessDenied);
        // A whole-bucket grant checks nothing.
        let mut h = HeldBody { rule: Rule::Schema(&DELETE), limit: 1 << 20, buf: BytesMut::new(), keys_within: None }.keys_within(Grant::parse("b").unwrap());
        assert!(h.hold(&mut Some(body(&["anything"])), true).is_ok());
    }

    #[test]
    fn restore_and_lock_bodies_are_checked() {
        use pingora::http::RequestHeader;
        let parse = |m: &str, uri: &str| {
            let mut r = RequestHeader::build(m, uri.as_bytes(), None).unwrap();
            r.insert_header("host", "h").unwrap();
            S3Request::parse(&r, None).unwrap()
        };
        for (m, uri) in [("POST", "/bkt/k?restore"), ("PUT", "/bkt/k?retention"), ("PUT", "/bkt/k?legal-hold"), ("PUT", "/bkt?object-lock")] {
            let held = HeldBody::for_request(&parse(m, uri)).unwrap().unwrap_or_else(|| panic!("{m} {uri} is not checked"));
            assert!(matches!(held.rule, Rule::Generic { .. }) && held.limit == GENERIC_LIMIT, "{m} {uri}");
        }
        let restore = "<RestoreRequest><Days>2</Days><GlacierJobParameters><Tier>Standard</Tier></GlacierJobParameters></RestoreRequest>";
        assert!(ok(Rule::Generic { max_depth: GENERIC_DEPTH }, restore));
        assert!(!ok(Rule::Generic { max_depth: GENERIC_DEPTH }, &nested("RestoreRequest", 1000)));
    }

    #[test]
    fn held_bodies_go_on_whole_or_not_at_all() {
        let mut h = HeldBody { rule: Rule::Schema(&DELETE), limit: 1 << 20, buf: BytesMut::new(), keys_within: None };
        let xml = delete(3);
        let (a, b) = xml.split_at(20);
        let mut piece = Some(Bytes::copy_from_slice(a.as_bytes()));
        h.hold(&mut piece, false).unwrap();
        assert_eq!(piece.as_deref(), Some(&b""[..]));
        let mut piece = Some(Bytes::copy_from_slice(b.as_bytes()));
        h.hold(&mut piece, true).unwrap();
        assert_eq!(piece.as_deref(), Some(xml.as_bytes()));

        let mut piece = Some(Bytes::from(nested("Object", 1000)));
        assert_eq!(h.hold(&mut piece, true).unwrap_err().code, S3ErrorCode::MalformedXML);
        let mut small = HeldBody { rule: Rule::Generic { max_depth: 4 }, limit: 10, buf: BytesMut::new(), keys_within: None };
        let mut piece = Some(Bytes::from_static(b"<Tagging></Tagging>"));
        assert_eq!(small.hold(&mut piece, false).unwrap_err().code, S3ErrorCode::MalformedXML);
        // No body at all (CreateBucket without a configuration) passes.
        let mut empty = HeldBody { rule: Rule::Generic { max_depth: 4 }, limit: 10, buf: BytesMut::new(), keys_within: None };
        let mut none = None;
        empty.hold(&mut none, true).unwrap();
        assert!(none.is_none());
    }

    /// The deepest nesting of a token stream, counted naively (no XML parser).
    fn naive_depth(tokens: &[(u8, usize)]) -> usize {
        let (mut d, mut max) = (0usize, 0usize);
        for (kind, _) in tokens {
            match kind {
                0 => {
                    d += 1;
                    max = max.max(d);
                }
                1 => d = d.saturating_sub(1),
                _ => {}
            }
        }
        max
    }

    proptest::proptest! {
        /// Random tag soups built from the schema's names: never a panic, and whatever is
        /// accepted stays within the schema's depth (and the generic depth limit).
        #[test]
        fn random_bodies_are_judged_safely(tokens in proptest::collection::vec((0u8..3, 0usize..7), 0..60)) {
            const NAMES: [&str; 7] = ["Delete", "Object", "Key", "Quiet", "VersionId", "Part", "x:Object"];
            let mut xml = String::new();
            for (kind, n) in &tokens {
                match kind {
                    0 => xml.push_str(&format!("<{}>", NAMES[*n])),
                    1 => xml.push_str(&format!("</{}>", NAMES[*n])),
                    _ => xml.push_str(["k", " ", "&amp;", "&", "<![CDATA[c]]>", "<!--c-->", "<a/>"][*n]),
                }
            }
            if ok(Rule::Schema(&DELETE), &xml) {
                proptest::prop_assert!(naive_depth(&tokens) <= 3, "{}", xml);
                proptest::prop_assert!(xml.starts_with("<Delete>"), "{}", xml);
            }
            if ok(Rule::Generic { max_depth: 4 }, &xml) {
                proptest::prop_assert!(naive_depth(&tokens) <= 4, "{}", xml);
            }
        }
    }

    #[test]
    fn schemas_fit_the_counters() {
        fn widest(e: &Element) -> usize {
            e.children.len().max(e.children.iter().map(widest).max().unwrap_or(0))
        }
        assert!(widest(&DELETE) <= 8 && widest(&COMPLETE) <= 8);
        assert_eq!((depth_of(&DELETE), depth_of(&COMPLETE)), (3, 3));
    }
}
