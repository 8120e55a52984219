//! Property tests of boxd's wire types (`boxd::wire`) against hostile JSON: arbitrary bytes and
//! arbitrary JSON (biased toward the protocol's field names) never make `serde_json` panic, what
//! parses re-serialises to something that parses to the same value, and generated valid values
//! of every type round-trip unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::{Debug, Write as _};

use boxd::wire::{
    Ack, EntryInfo, EntryKind, EntryList, ErrorBody, ErrorDetail, Event, ExitInfo, Health, InputRequest,
    ListQuery, MoveRequest, PathQuery, ProcessInfo, ProcessList, ProcessSpec, PtySize, RunRequest, RunResult,
    SignalName, SignalRequest, StartRequest, TcpQuery, WriteQuery, WriteResult,
};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config(cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(cases);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// `bytes` as `T`: refused or read, and what is read survives a round trip unchanged.
fn parse_as<T>(bytes: &[u8])
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        let again = serde_json::to_vec(&value).expect("a parsed value serialises");
        let back: T = serde_json::from_slice(&again).unwrap_or_else(|e| {
            panic!("{} does not read back its own JSON: {e}", String::from_utf8_lossy(&again))
        });
        assert_eq!(back, value, "{}", String::from_utf8_lossy(&again));
    }
}

/// `bytes` as every wire type.
fn parse_as_everything(bytes: &[u8]) {
    parse_as::<Health>(bytes);
    parse_as::<PtySize>(bytes);
    parse_as::<ProcessSpec>(bytes);
    parse_as::<StartRequest>(bytes);
    parse_as::<RunRequest>(bytes);
    parse_as::<ExitInfo>(bytes);
    parse_as::<Event>(bytes);
    parse_as::<RunResult>(bytes);
    parse_as::<ProcessInfo>(bytes);
    parse_as::<ProcessList>(bytes);
    parse_as::<InputRequest>(bytes);
    parse_as::<SignalName>(bytes);
    parse_as::<SignalRequest>(bytes);
    parse_as::<Ack>(bytes);
    parse_as::<PathQuery>(bytes);
    parse_as::<WriteQuery>(bytes);
    parse_as::<ListQuery>(bytes);
    parse_as::<TcpQuery>(bytes);
    parse_as::<WriteResult>(bytes);
    parse_as::<EntryKind>(bytes);
    parse_as::<EntryInfo>(bytes);
    parse_as::<EntryList>(bytes);
    parse_as::<MoveRequest>(bytes);
    parse_as::<ErrorBody>(bytes);
    parse_as::<ErrorDetail>(bytes);
}

/// The protocol's field and variant names, and a few others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "ok", "pid", "version", "rows", "cols", "cmd", "args", "shell", "envs", "cwd", "user",
            "timeout_ms", "tag", "stdin", "pty", "max_output_bytes", "exit_code", "signal", "timed_out",
            "duration_ms", "start", "stdout", "stderr", "end", "stdout_truncated", "stderr_truncated",
            "processes", "data", "eof", "SIGTERM", "SIGKILL", "path", "mode", "depth", "port", "host",
            "size", "name", "kind", "modified_ms", "symlink_target", "entries", "from", "to", "error",
            "code", "message", "file", "dir", "symlink", "other",
        ])
        .prop_map(str::to_owned),
        1 => ".{0,8}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            json!(0),
            json!(-1),
            json!(65535),
            json!(65536),
            json!(u32::MAX),
            json!(u64::from(u32::MAX) + 1),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(1.5),
            json!(1e300),
        ]),
    ]
}

/// Arbitrary JSON, biased toward the protocol's names and boundary numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        key().prop_map(Value::String),
        ".{0,16}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..10)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,24}", Just(String::new()), "[\\x00-\\x1f\"\\\\/]{0,8}", "\\PC{0,8}"]
}

fn opt<T: Debug + Clone + 'static>(s: impl Strategy<Value = T> + 'static) -> BoxedStrategy<Option<T>> {
    prop::option::of(s).boxed()
}

fn process_spec() -> impl Strategy<Value = ProcessSpec> {
    (
        text(),
        prop::collection::vec(text(), 0..4),
        any::<bool>(),
        prop::collection::btree_map(text(), text(), 0..4),
        opt(text()),
        opt(text()),
        opt(any::<u64>()),
        opt(text()),
    )
        .prop_map(|(cmd, args, shell, envs, cwd, user, timeout_ms, tag)| ProcessSpec {
            cmd,
            args,
            shell,
            envs: envs.into_iter().collect::<BTreeMap<_, _>>(),
            cwd,
            user,
            timeout_ms,
            tag,
        })
}

fn pty_size() -> impl Strategy<Value = PtySize> {
    (any::<u16>(), any::<u16>()).prop_map(|(rows, cols)| PtySize { rows, cols })
}

fn exit_info() -> impl Strategy<Value = ExitInfo> {
    (opt(any::<i32>()), opt(any::<i32>()), any::<bool>(), any::<u64>()).prop_map(
        |(exit_code, signal, timed_out, duration_ms)| ExitInfo { exit_code, signal, timed_out, duration_ms },
    )
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        any::<u32>().prop_map(|pid| Event::Start { pid }),
        text().prop_map(Event::Stdout),
        text().prop_map(Event::Stderr),
        text().prop_map(Event::Pty),
        exit_info().prop_map(Event::End),
    ]
}

fn run_result() -> impl Strategy<Value = RunResult> {
    (exit_info(), text(), text(), any::<bool>(), any::<bool>()).prop_map(|(exit, stdout, stderr, so, se)| {
        RunResult {
            exit_code: exit.exit_code,
            signal: exit.signal,
            timed_out: exit.timed_out,
            duration_ms: exit.duration_ms,
            stdout,
            stderr,
            stdout_truncated: so,
            stderr_truncated: se,
        }
    })
}

fn signal_name() -> impl Strategy<Value = SignalName> {
    prop::sample::select(vec![
        SignalName::Term,
        SignalName::Kill,
        SignalName::Int,
        SignalName::Hup,
        SignalName::Quit,
        SignalName::Usr1,
        SignalName::Usr2,
        SignalName::Stop,
        SignalName::Cont,
    ])
}

fn entry_info() -> impl Strategy<Value = EntryInfo> {
    (
        text(),
        text(),
        prop::sample::select(vec![EntryKind::File, EntryKind::Dir, EntryKind::Symlink, EntryKind::Other]),
        any::<u64>(),
        any::<u32>(),
        opt(any::<i64>()),
        opt(text()),
    )
        .prop_map(|(name, path, kind, size, mode, modified_ms, symlink_target)| EntryInfo {
            name,
            path,
            kind,
            size,
            mode,
            modified_ms,
            symlink_target,
        })
}

/// Serialises `value`, reads it back, and checks nothing changed.
fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: DeserializeOwned + Serialize + PartialEq + Debug,
{
    let bytes = serde_json::to_vec(value).expect("wire values serialise");
    let back: T = serde_json::from_slice(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", String::from_utf8_lossy(&bytes))))?;
    prop_assert_eq!(&back, value);
    // And through `Value`, as a caller that inspects or edits the JSON first would.
    let through: T = serde_json::from_value(serde_json::to_value(value).unwrap())
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(&through, value);
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    /// Arbitrary bytes as every type.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        parse_as_everything(&bytes);
    }

    /// Arbitrary JSON as every type; what parses round-trips.
    #[test]
    fn arbitrary_json_never_panics(value in json_value()) {
        parse_as_everything(&serde_json::to_vec(&value).unwrap());
    }

    /// Objects with the protocol's field names and arbitrary values: the shapes that come
    /// closest to parsing (wrong types, boundary numbers, extra and duplicate fields).
    #[test]
    fn near_miss_objects_never_panic(
        fields in prop::collection::vec((key(), json_value()), 0..12),
        duplicate in prop::option::of((key(), json_value(), json_value())),
    ) {
        let mut text = String::from("{");
        for (i, (k, v)) in fields.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            write!(text, "{}:{v}", Value::String(k.clone())).unwrap();
        }
        if let Some((k, a, b)) = duplicate {
            let k = Value::String(k);
            write!(text, "{}{k}:{a},{k}:{b}", if fields.is_empty() { "" } else { "," }).unwrap();
        }
        text.push('}');
        parse_as_everything(text.as_bytes());
        // The same fields one level down, as an externally tagged `Event` or a list's entry.
        for wrapper in ["start", "end", "entries", "processes", "error", "pty"] {
            let nested = if wrapper == "entries" || wrapper == "processes" {
                format!("{{\"{wrapper}\":[{text}]}}")
            } else {
                format!("{{\"{wrapper}\":{text}}}")
            };
            parse_as_everything(nested.as_bytes());
        }
    }

    /// A valid JSON document cut short or with one byte changed.
    #[test]
    fn damaged_valid_documents_never_panic(
        spec in process_spec(),
        cut in any::<usize>(),
        flip in any::<(usize, u8)>(),
    ) {
        let bytes = serde_json::to_vec(&RunRequest { process: spec, max_output_bytes: 7 }).unwrap();
        parse_as_everything(&bytes[..cut % (bytes.len() + 1)]);
        let mut flipped = bytes.clone();
        let i = flip.0 % flipped.len();
        flipped[i] = flip.1;
        parse_as_everything(&flipped);
    }

    /// Requests the host sends.
    #[test]
    fn requests_round_trip(
        spec in process_spec(),
        stdin in any::<bool>(),
        pty in opt(pty_size()),
        max_output_bytes in any::<u64>(),
        data in opt(text()),
        eof in any::<bool>(),
        signal in signal_name(),
        from in text(),
        to in text(),
    ) {
        round_trip(&spec)?;
        round_trip(&StartRequest { process: spec.clone(), stdin, pty })?;
        round_trip(&RunRequest { process: spec, max_output_bytes })?;
        round_trip(&InputRequest { data, eof })?;
        round_trip(&SignalRequest { signal })?;
        round_trip(&MoveRequest { from, to })?;
    }

    /// Answers and events boxd sends.
    #[test]
    fn answers_round_trip(
        events in prop::collection::vec(event(), 0..6),
        result in run_result(),
        entries in prop::collection::vec(entry_info(), 0..4),
        processes in prop::collection::vec(
            (any::<u32>(), text(), prop::collection::vec(text(), 0..3), opt(text()), any::<bool>()),
            0..3,
        ),
        health in (any::<bool>(), any::<u32>(), text()),
        written in (text(), any::<u64>()),
        error in (text(), text()),
    ) {
        for event in &events {
            round_trip(event)?;
            // Events travel as JSON lines: one line each, whatever their text holds.
            let line = serde_json::to_string(event).unwrap();
            prop_assert!(!line.contains('\n'));
        }
        round_trip(&result)?;
        for entry in &entries {
            round_trip(entry)?;
        }
        round_trip(&EntryList { entries })?;
        let processes = processes
            .into_iter()
            .map(|(pid, cmd, args, tag, pty)| ProcessInfo { pid, cmd, args, tag, pty })
            .collect();
        round_trip(&ProcessList { processes })?;
        round_trip(&Health { ok: health.0, pid: health.1, version: health.2 })?;
        round_trip(&WriteResult { path: written.0, size: written.1 })?;
        round_trip(&ErrorBody { error: ErrorDetail { code: error.0, message: error.1 } })?;
        round_trip(&Ack { ok: true })?;
    }

    /// Query-string types, as JSON.
    #[test]
    fn queries_round_trip(
        path in text(),
        mode in opt(text()),
        offset in opt(any::<u64>()),
        depth in opt(any::<u32>()),
        port in any::<u16>(),
        host in opt(text()),
    ) {
        round_trip(&PathQuery { path: path.clone() })?;
        round_trip(&WriteQuery { path: path.clone(), mode, offset })?;
        round_trip(&ListQuery { path, depth })?;
        round_trip(&TcpQuery { port, host })?;
    }
}

/// JSON nested far past serde_json's recursion limit is refused, not a stack overflow, also
/// inside the flattened requests (which buffer unknown fields).
#[test]
fn deep_nesting_is_refused() {
    let deep = "[".repeat(100_000);
    parse_as_everything(deep.as_bytes());
    let inside = format!("{{\"cmd\":\"true\",\"extra\":{deep}");
    assert!(serde_json::from_str::<StartRequest>(&inside).is_err());
    assert!(serde_json::from_str::<RunRequest>(&inside).is_err());
    let objects = "{\"a\":".repeat(50_000);
    parse_as_everything(objects.as_bytes());
    assert!(serde_json::from_str::<RunRequest>(&format!("{{\"cmd\":\"x\",\"b\":{objects}")).is_err());
}

/// Numbers at the edges of each field's type: in range read exactly, out of range refused.
#[test]
fn boundary_numbers() {
    let pty: StartRequest = serde_json::from_str(r#"{"cmd":"x","pty":{"rows":65535,"cols":0}}"#).unwrap();
    assert_eq!(pty.pty, Some(PtySize { rows: 65535, cols: 0 }));
    assert!(serde_json::from_str::<StartRequest>(r#"{"cmd":"x","pty":{"rows":65536,"cols":0}}"#).is_err());
    assert!(serde_json::from_str::<StartRequest>(r#"{"cmd":"x","pty":{"rows":-1,"cols":0}}"#).is_err());
    let run: RunRequest =
        serde_json::from_str(&format!(r#"{{"cmd":"x","timeout_ms":{},"max_output_bytes":0}}"#, u64::MAX))
            .unwrap();
    assert_eq!((run.process.timeout_ms, run.max_output_bytes), (Some(u64::MAX), 0));
    assert!(serde_json::from_str::<RunRequest>(r#"{"cmd":"x","timeout_ms":18446744073709551616}"#).is_err());
    assert!(serde_json::from_str::<RunRequest>(r#"{"cmd":"x","timeout_ms":1.5}"#).is_err());
    assert!(serde_json::from_str::<RunRequest>(r#"{"cmd":"x","timeout_ms":-1}"#).is_err());
    assert!(serde_json::from_str::<TcpQuery>(r#"{"port":65536}"#).is_err());
    assert!(serde_json::from_str::<SignalRequest>(r#"{"signal":"SIGSEGV"}"#).is_err());
    assert!(serde_json::from_str::<Event>(r#"{"start":{"pid":4294967296}}"#).is_err());
}
