//! Property tests of the x402 header parsers against hostile input: arbitrary text and bytes,
//! base64 of arbitrary JSON, and mutations of honest v1 `X-PAYMENT` and v2 `PAYMENT-SIGNATURE`
//! headers, fed to `wire::decode_header`, `wire::header_version`, `SentPayment::from_headers` and
//! the off-chain `exact::check`, and hostile 402s fed to the payer's `client::Challenge`. Nothing
//! may panic, every refusal carries one of the reason codes of `reason.rs`, and no mutation of an
//! honest payment may be accepted as anything but that payment.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;

use alloy::primitives::Address;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{Map, Value, json};
use vendbox_core::Usdc;
use vendbox_pay::eip3009::Authorization;
use vendbox_pay::exact::{self, Acceptance, Charge, Requirements, SentPayment, Version};
use vendbox_pay::wire::{self, MAX_HEADER_BYTES, PaymentPayloadV1, PaymentPayloadV2};
use vendbox_pay::{EvmAddress, Network, Reason, Rejection, Wallet, client};

/// The clock every check here runs at (as in `exact.rs`'s own tests).
const NOW: u64 = 1_800_000_000;

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

fn requirements() -> Requirements {
    Requirements::new(
        Acceptance::new(
            Network::new(84532),
            EvmAddress::repeat_byte(0xaa),
            "USDC",
            "2",
            EvmAddress::repeat_byte(0xbb),
            300,
        ),
        Charge {
            amount: Usdc(10_000),
            resource: "http://127.0.0.1:8402/catalog".into(),
            description: "VpsAgent catalog".into(),
            mime_type: "application/json".into(),
            kind: vendbox_pay::ChargeKind::Other,
        },
    )
}

/// One honest payment in both versions, signed once for the whole file (signing is slow in a
/// debug build).
struct Honest {
    signer: Address,
    v1: String,
    v2: String,
    v1_json: Value,
    v2_json: Value,
    authorization_v1: Authorization,
    authorization_v2: Authorization,
}

fn honest() -> &'static Honest {
    static HONEST: OnceLock<Honest> = OnceLock::new();
    HONEST.get_or_init(|| {
        let signer = Wallet::random();
        let r = requirements();
        let v1 = client::pay_v1(&signer, &r.v1(), NOW).unwrap();
        let v2 = client::pay_v2(&signer, &r.v2(), &r.resource(), NOW).unwrap();
        let p1: PaymentPayloadV1 = wire::decode_header(&v1).unwrap();
        let p2: PaymentPayloadV2 = wire::decode_header(&v2).unwrap();
        // The honest payments pass: the properties below start from something accepted.
        exact::check(SentPayment::V1(p1.clone()), &r, NOW).unwrap();
        exact::check(SentPayment::V2(p2.clone()), &r, NOW).unwrap();
        Honest {
            signer: signer.address().to_string().parse().unwrap(),
            v1_json: serde_json::to_value(&p1).unwrap(),
            v2_json: serde_json::to_value(&p2).unwrap(),
            authorization_v1: Authorization::from_wire(&p1.payload.authorization).unwrap(),
            authorization_v2: Authorization::from_wire(&p2.payload.authorization).unwrap(),
            v1,
            v2,
        }
    })
}

/// The reasons a header that could not be read as a payment is refused with.
const HEADER_REASONS: [Reason; 4] =
    [Reason::HeaderEncoding, Reason::HeaderJson, Reason::HeaderTooLarge, Reason::Version];

/// A refusal is coded: one of the known reasons, whose code reads back to it, with a message.
fn assert_coded(rejection: &Rejection) {
    assert!(Reason::ALL.contains(&rejection.reason), "unknown reason {:?}", rejection.reason);
    let code = rejection.reason.code();
    assert!(!code.is_empty());
    assert_eq!(Reason::from_code(code), Some(rejection.reason));
    assert!(!rejection.message.is_empty(), "{code} without a message");
}

/// Every header parser on `header`: none panics, and every refusal is a coded header refusal.
fn parse_everywhere(header: &str) {
    match wire::decode_header::<Value>(header) {
        Ok(_) => {}
        Err(r) => {
            assert_coded(&r);
            assert!(r.reason.is_malformed_request(), "{r}");
        }
    }
    if let Err(r) = wire::header_version(header) {
        assert_coded(&r);
        assert!(HEADER_REASONS.contains(&r.reason), "{r}");
    }
    for (v2, v1, expected) in [
        (Some(header), None, Version::V2),
        (None, Some(header), Version::V1),
        (Some(header), Some("%"), Version::V2),
    ] {
        match SentPayment::from_headers(v2, v1).expect("a header was given") {
            Ok(sent) => {
                assert_eq!(sent.version(), expected, "a payment is read in its header's version");
                assert!(!sent.to_json().is_null());
                if let Err(r) = exact::check(sent, &requirements(), NOW) {
                    assert_coded(&r);
                }
            }
            Err(r) => {
                assert_coded(&r);
                assert!(HEADER_REASONS.contains(&r.reason), "{r}");
            }
        }
    }
}

/// Strings a parser might treat specially: numbers, hex, addresses, networks, base64 pieces.
fn tricky_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("exact".to_owned()),
        Just("upto".to_owned()),
        Just("base-sepolia".to_owned()),
        Just("eip155:84532".to_owned()),
        Just("eip155:0".to_owned()),
        Just("eip155:18446744073709551616".to_owned()),
        Just("0x".to_owned()),
        Just(format!("0x{}", "ff".repeat(32))),
        Just(format!("0x{}", "bb".repeat(20))),
        Just(format!("0x{}", "00".repeat(65))),
        Just(format!("0x{}1b", "ff".repeat(64))),
        Just("115792089237316195423570985008687907853269984665640564039457584007913129639936".to_owned()),
        Just("-1".to_owned()),
        Just(" 10000 ".to_owned()),
        Just("1e4".to_owned()),
        "[0-9]{0,90}",
        "0x[0-9a-fA-F]{0,140}",
        "[A-Za-z0-9+/=_-]{0,40}",
        ".{0,40}",
    ]
}

/// The field names of x402 payloads, and a few others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "x402Version",
            "scheme",
            "network",
            "payload",
            "signature",
            "authorization",
            "from",
            "to",
            "value",
            "validAfter",
            "validBefore",
            "nonce",
            "accepted",
            "resource",
            "url",
            "amount",
            "asset",
            "payTo",
            "maxTimeoutSeconds",
            "extra",
            "extensions",
            "name",
            "version",
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ]
}

/// Arbitrary JSON, biased toward the shapes and values x402 payloads have.
fn json_value() -> impl Strategy<Value = Value> {
    let number = prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![0u64, 1, 2, 3, 255, 256, u64::MAX]).prop_map(Value::from),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number,
        tricky_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..8)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON object that claims a version (often 1 or 2) and has random x402-ish fields.
fn payload_like() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            3 => prop::sample::select(vec![json!(1), json!(2)]),
            1 => json_value(),
        ],
        prop::collection::vec((key(), json_value()), 0..8),
    )
        .prop_map(|(version, fields)| {
            let mut object: Map<String, Value> = fields.into_iter().collect();
            object.insert("x402Version".into(), version);
            Value::Object(object)
        })
}

/// How to put JSON bytes into a header.
fn encode(bytes: &[u8], how: u8) -> String {
    match how % 4 {
        0 => STANDARD.encode(bytes),
        1 => URL_SAFE.encode(bytes),
        2 => STANDARD_NO_PAD.encode(bytes),
        _ => format!("  {}\t", STANDARD.encode(bytes)),
    }
}

/// Every path to a value in `value`, as JSON pointers (the root is "").
fn pointers(value: &Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_owned());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                pointers(v, &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// One change to an honest payload.
#[derive(Debug, Clone)]
enum Mutation {
    /// The value at a path becomes another.
    Replace(Value),
    /// The value at a path (a member or an element) goes away.
    Remove,
    /// An object at a path gets one more member.
    Insert(String, Value),
    /// A string at a path is edited as a sloppy or malicious client would.
    Edit(StringEdit),
}

#[derive(Debug, Clone, Copy)]
enum StringEdit {
    Upper,
    Lower,
    Pad,
    Prefix0x,
    StripPrefix,
    AppendZero,
    DropLast,
    Empty,
    FlipChar(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let edit = prop_oneof![
        Just(StringEdit::Upper),
        Just(StringEdit::Lower),
        Just(StringEdit::Pad),
        Just(StringEdit::Prefix0x),
        Just(StringEdit::StripPrefix),
        Just(StringEdit::AppendZero),
        Just(StringEdit::DropLast),
        Just(StringEdit::Empty),
        any::<usize>().prop_map(StringEdit::FlipChar),
    ];
    prop_oneof![
        3 => json_value().prop_map(Mutation::Replace),
        1 => Just(Mutation::Remove),
        1 => (key(), json_value()).prop_map(|(k, v)| Mutation::Insert(k, v)),
        3 => edit.prop_map(Mutation::Edit),
    ]
}

fn edit_string(text: &str, edit: StringEdit) -> String {
    match edit {
        StringEdit::Upper => text.to_uppercase(),
        StringEdit::Lower => text.to_lowercase(),
        StringEdit::Pad => format!(" {text}\n"),
        StringEdit::Prefix0x => format!("0x{text}"),
        StringEdit::StripPrefix => text.trim_start_matches("0x").to_owned(),
        StringEdit::AppendZero => format!("{text}0"),
        StringEdit::DropLast => {
            let mut t = text.to_owned();
            t.pop();
            t
        }
        StringEdit::Empty => String::new(),
        StringEdit::FlipChar(i) => {
            let mut chars: Vec<char> = text.chars().collect();
            if !chars.is_empty() {
                let i = i % chars.len();
                chars[i] = match chars[i] {
                    '0' => '1',
                    'a' => 'b',
                    'A' => 'B',
                    c if c.is_ascii_digit() => '0',
                    _ => 'a',
                };
            }
            chars.into_iter().collect()
        }
    }
}

/// `honest` with `mutation` applied at the `which`-th path (modulo their number).
fn mutate(honest: &Value, which: usize, mutation: &Mutation) -> Value {
    let mut value = honest.clone();
    let mut paths = Vec::new();
    pointers(&value, "", &mut paths);
    let path = &paths[which % paths.len()];
    match mutation {
        Mutation::Replace(new) => match value.pointer_mut(path) {
            Some(slot) => *slot = new.clone(),
            None => unreachable!("{path} was just listed"),
        },
        Mutation::Remove => {
            if let Some((parent, last)) = path.rsplit_once('/') {
                let last = last.replace("~1", "/").replace("~0", "~");
                match value.pointer_mut(parent) {
                    Some(Value::Object(map)) => {
                        map.remove(&last);
                    }
                    Some(Value::Array(items)) => {
                        if let Ok(i) = last.parse::<usize>() {
                            items.remove(i);
                        }
                    }
                    _ => {}
                }
            } else {
                value = Value::Null;
            }
        }
        Mutation::Insert(k, v) => {
            if let Some(Value::Object(map)) = value.pointer_mut(path) {
                map.insert(k.clone(), v.clone());
            }
        }
        Mutation::Edit(edit) => {
            if let Some(Value::String(s)) = value.pointer_mut(path) {
                *s = edit_string(s, *edit);
            }
        }
    }
    value
}

/// A mutated honest payload in its own header: it may be refused for any coded reason, or
/// accepted, but only as exactly the payment that was signed.
fn check_mutated(json: &Value, v2: bool, how: u8) {
    let header = encode(&serde_json::to_vec(json).unwrap(), how);
    parse_everywhere(&header);
    let (slot_v2, slot_v1) = if v2 { (Some(header.as_str()), None) } else { (None, Some(header.as_str())) };
    let sent = match SentPayment::from_headers(slot_v2, slot_v1).unwrap() {
        Ok(sent) => sent,
        Err(r) => {
            assert_coded(&r);
            return;
        }
    };
    match exact::check(sent, &requirements(), NOW) {
        Ok(checked) => {
            let h = honest();
            let signed = if v2 { h.authorization_v2 } else { h.authorization_v1 };
            assert_eq!(checked.authorization, signed, "a mutated payment was accepted with other terms");
            assert_eq!(checked.payer(), h.signer, "a mutated payment was accepted from another payer");
        }
        Err(r) => assert_coded(&r),
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text at all, as long as twice the header limit.
    #[test]
    fn arbitrary_text_is_refused_or_read(text in prop_oneof![
        ".{0,64}",
        "[A-Za-z0-9+/=_-]{0,256}",
        prop::collection::vec(any::<char>(), 0..2 * MAX_HEADER_BYTES).prop_map(|c| c.into_iter().collect::<String>()),
    ]) {
        parse_everywhere(&text);
    }

    /// Arbitrary bytes, as a proxy that lets non-UTF-8 header bytes through would hand them on.
    #[test]
    fn arbitrary_bytes_are_refused_or_read(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        parse_everywhere(&String::from_utf8_lossy(&bytes));
        let latin1: String = bytes.iter().map(|&b| char::from(b)).collect();
        parse_everywhere(&latin1);
    }

    /// Base64 of arbitrary bytes: valid encoding, anything inside.
    #[test]
    fn base64_of_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), how in any::<u8>()) {
        parse_everywhere(&encode(&bytes, how));
    }

    /// Base64 of arbitrary JSON, and of objects that claim version 1 or 2.
    #[test]
    fn base64_of_arbitrary_json(value in prop_oneof![json_value(), payload_like()], how in any::<u8>()) {
        let header = encode(&serde_json::to_vec(&value).unwrap(), how);
        parse_everywhere(&header);
        // What a header claims is what `header_version` reads.
        if let (Ok(version), Some(claimed)) = (wire::header_version(&header), value.get("x402Version")) {
            prop_assert_eq!(Some(version), claimed.as_u64());
        }
    }

    /// An honest v1 or v2 payment with one field replaced, removed, added or edited.
    #[test]
    fn mutated_honest_payments_are_refused_or_unchanged(
        v2 in any::<bool>(),
        which in any::<usize>(),
        mutation in mutation(),
        how in any::<u8>(),
    ) {
        let h = honest();
        let json = mutate(if v2 { &h.v2_json } else { &h.v1_json }, which, &mutation);
        check_mutated(&json, v2, how);
    }

    /// Two changes at once.
    #[test]
    fn doubly_mutated_honest_payments_are_refused_or_unchanged(
        v2 in any::<bool>(),
        first in (any::<usize>(), mutation()),
        second in (any::<usize>(), mutation()),
    ) {
        let h = honest();
        let json = mutate(if v2 { &h.v2_json } else { &h.v1_json }, first.0, &first.1);
        let json = mutate(&json, second.0, &second.1);
        check_mutated(&json, v2, 0);
    }

    /// The header text of an honest payment cut, spliced or with characters changed.
    #[test]
    fn mutated_honest_header_text(
        v2 in any::<bool>(),
        edits in prop::collection::vec((any::<usize>(), any::<char>(), 0u8..3), 1..6),
    ) {
        let h = honest();
        let mut text: Vec<char> = (if v2 { &h.v2 } else { &h.v1 }).chars().collect();
        for (at, c, op) in edits {
            let i = at % (text.len() + 1);
            match op {
                0 => text.insert(i, c),
                1 if i < text.len() => { text.remove(i); }
                _ if i < text.len() => text[i] = c,
                _ => text.push(c),
            }
        }
        let header: String = text.into_iter().collect();
        parse_everywhere(&header);
        let (slot_v2, slot_v1) = if v2 { (Some(header.as_str()), None) } else { (None, Some(header.as_str())) };
        if let Ok(sent) = SentPayment::from_headers(slot_v2, slot_v1).unwrap()
            && let Ok(checked) = exact::check(sent, &requirements(), NOW)
        {
            prop_assert_eq!(checked.payer(), h.signer);
            prop_assert_eq!(checked.authorization, if v2 { h.authorization_v2 } else { h.authorization_v1 });
        }
    }

    /// Arbitrary signatures over the honest terms: any 65 bytes (or fewer, or more), every `v`.
    #[test]
    fn arbitrary_signatures_are_refused(
        v2 in any::<bool>(),
        bytes in prop_oneof![
            prop::collection::vec(any::<u8>(), 65),
            prop::collection::vec(any::<u8>(), 0..80),
        ],
        v in prop::sample::select(vec![0u8, 1, 27, 28, 29, 255]),
        prefixed in any::<bool>(),
    ) {
        let h = honest();
        let mut json = if v2 { h.v2_json.clone() } else { h.v1_json.clone() };
        let mut bytes = bytes;
        if bytes.len() == 65 {
            bytes[64] = v;
        }
        let hex_text = hex::encode(&bytes);
        json["payload"]["signature"] = json!(if prefixed { format!("0x{hex_text}") } else { hex_text });
        let header = STANDARD.encode(serde_json::to_vec(&json).unwrap());
        let (slot_v2, slot_v1) = if v2 { (Some(header.as_str()), None) } else { (None, Some(header.as_str())) };
        let sent = SentPayment::from_headers(slot_v2, slot_v1).unwrap().unwrap();
        match exact::check(sent, &requirements(), NOW) {
            // 65 random bytes are the honest signature with a chance of 2^-520.
            Ok(checked) => prop_assert_eq!(checked.payer(), h.signer),
            Err(r) => {
                assert_coded(&r);
                prop_assert_eq!(r.reason, Reason::Signature, "{}", r);
            }
        }
    }
}

/// Requirements a hostile or broken server might send in a 402.
fn requirements_v2_json() -> impl Strategy<Value = Value> {
    (
        prop_oneof![4 => Just(json!("exact")), 1 => json_value()],
        prop_oneof![4 => Just(json!("eip155:84532")), 2 => Just(json!("base")), 1 => json_value()],
        prop_oneof![4 => Just(json!("10000")), 1 => json_value()],
        prop_oneof![4 => Just(json!(format!("0x{}", "aa".repeat(20)))), 1 => json_value()],
        prop_oneof![4 => Just(json!(format!("0x{}", "bb".repeat(20)))), 1 => json_value()],
        prop_oneof![
            2 => Just(json!(60)),
            2 => prop::sample::select(vec![0, 1, 59, u64::from(u32::MAX), u64::MAX - NOW, u64::MAX - 59, u64::MAX])
                .prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => json_value(),
        ],
        prop_oneof![4 => Just(json!({"name": "USDC", "version": "2"})), 1 => json_value()],
    )
        .prop_map(|(scheme, network, amount, asset, pay_to, timeout, extra)| {
            json!({
                "scheme": scheme, "network": network, "amount": amount, "asset": asset,
                "payTo": pay_to, "maxTimeoutSeconds": timeout, "extra": extra,
            })
        })
}

/// The v1 form of generated v2 requirements.
fn v1_requirements(v2: &Value) -> Value {
    json!({
        "scheme": v2["scheme"], "network": v2["network"], "maxAmountRequired": v2["amount"],
        "resource": "http://x/y", "description": "", "mimeType": "application/json",
        "payTo": v2["payTo"], "maxTimeoutSeconds": v2["maxTimeoutSeconds"], "asset": v2["asset"],
        "extra": v2["extra"],
    })
}

proptest! {
    #![proptest_config(config(64))]

    /// The payer's side reads a 402 from any server: its `PAYMENT-REQUIRED` header and body may
    /// be anything, and reading, pricing and paying them refuses or succeeds without panicking.
    /// (Paying signs, which is slow in a debug build: fewer cases.)
    #[test]
    fn hostile_402s_are_read_priced_and_paid_without_panic(
        header in prop_oneof![
            1 => ".{0,64}".prop_map(Some),
            1 => Just(None),
            1 => (json_value(), any::<u8>()).prop_map(|(v, how)| Some(encode(&serde_json::to_vec(&v).unwrap(), how))),
            5 => (
                prop::collection::vec(requirements_v2_json(), 0..3),
                prop_oneof![4 => Just(json!({"url": "http://x/y"})), 1 => json_value()],
            )
                .prop_map(|(accepts, resource)| {
                    let required = json!({"x402Version": 2, "resource": resource, "accepts": accepts});
                    Some(STANDARD.encode(required.to_string()))
                }),
        ],
        body in prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..64),
            1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            1 => payload_like().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            3 => prop::collection::vec(requirements_v2_json(), 0..3).prop_map(|accepts| {
                let accepts: Vec<Value> = accepts.into_iter().map(|r| v1_requirements(&r)).collect();
                serde_json::to_vec(&json!({"x402Version": 1, "error": "pay", "accepts": accepts})).unwrap()
            }),
        ],
    ) {
        let Ok(challenge) = client::Challenge::read(header.as_deref(), &body) else { return Ok(()) };
        let _ = challenge.price();
        let signer = Wallet::random();
        if let Ok((name, value)) = challenge.pay(&signer, NOW) {
            prop_assert!(name == wire::PAYMENT_SIGNATURE || name == wire::X_PAYMENT);
            parse_everywhere(&value);
        }
    }
}

/// A header of exactly the limit is read; one byte more is refused as too large, before any
/// decoding.
#[test]
fn the_size_limit_is_exact() {
    let at_limit = "A".repeat(MAX_HEADER_BYTES);
    assert_ne!(wire::decode_header::<Value>(&at_limit).unwrap_err().reason, Reason::HeaderTooLarge);
    let over = "A".repeat(MAX_HEADER_BYTES + 1);
    assert_eq!(wire::decode_header::<Value>(&over).unwrap_err().reason, Reason::HeaderTooLarge);
}

/// JSON nested far deeper than serde_json's recursion limit is refused, not a stack overflow.
#[test]
fn deeply_nested_json_is_refused() {
    for open in ["[", "{\"a\":"] {
        let json = open.repeat(5000);
        let header = STANDARD.encode(&json);
        assert!(header.len() > MAX_HEADER_BYTES || wire::decode_header::<Value>(&header).is_err());
        let small = STANDARD.encode(open.repeat(1000));
        assert!(small.len() <= MAX_HEADER_BYTES);
        assert_eq!(wire::decode_header::<Value>(&small).unwrap_err().reason, Reason::HeaderJson);
        assert_eq!(wire::header_version(&small).unwrap_err().reason, Reason::HeaderJson);
    }
}

/// Found by `hostile_402s_are_read_priced_and_paid_without_panic` (minimal input): a v1 402 whose
/// `maxTimeoutSeconds` is near `u64::MAX` makes `client::authorize` compute `now + timeout` with
/// an overflow, so a hostile server can panic `vendbox fetch` (in a debug build; a release build
/// wraps and signs an authorization that is already expired). Fixed with a saturating add.
#[test]
fn regression_a_402_with_a_huge_timeout_does_not_panic_the_payer() {
    let body = br#"{"accepts":[{"asset":"0xaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","description":"","extra":{"name":"USDC","version":"2"},"maxAmountRequired":"10000","maxTimeoutSeconds":18446744073709551556,"mimeType":"application/json","network":"eip155:84532","payTo":"0xbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","resource":"http://x/y","scheme":"exact"}],"error":"pay","x402Version":1}"#;
    let challenge = client::Challenge::read(Some(""), body).unwrap();
    let signer = Wallet::random();
    if let Ok((_, header)) = challenge.pay(&signer, NOW) {
        parse_everywhere(&header);
    }
    let r = requirements();
    let mut v2 = r.v2();
    v2.max_timeout_seconds = u64::MAX;
    let _ = client::pay_v2(&signer, &v2, &r.resource(), NOW);
}
