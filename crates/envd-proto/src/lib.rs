//! The messages of E2B's envd, the in-sandbox API the `e2b` SDKs speak: the `process.Process`
//! and `filesystem.Filesystem` services of E2B's published `.proto` files (vendored unchanged
//! under `proto/`, Apache-2.0, with their origin), generated at build time: `prost` structs
//! and `pbjson`'s proto3 JSON mapping (lowerCamelCase names, `bytes` as base64, enums by name,
//! 64-bit integers as strings), which is the JSON codec of Connect that the SDKs use.

/// The well-known types the messages use (`google.protobuf.Timestamp`).
pub use pbjson_types;

/// `package process`: processes (start, connect, list, input, signals, PTY).
#[allow(missing_docs, clippy::pedantic, clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.rs"));
    include!(concat!(env!("OUT_DIR"), "/process.serde.rs"));
}

/// `package filesystem`: entries (stat, list, make, move, remove) and directory watches.
#[allow(missing_docs, clippy::pedantic, clippy::all, unreachable_pub, missing_debug_implementations)]
pub mod filesystem {
    include!(concat!(env!("OUT_DIR"), "/filesystem.rs"));
    include!(concat!(env!("OUT_DIR"), "/filesystem.serde.rs"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::process::{ProcessEvent, process_event};

    #[test]
    fn json_is_proto3_json() {
        let event = ProcessEvent {
            event: Some(process_event::Event::Data(process_event::DataEvent {
                output: Some(process_event::data_event::Output::Stdout(b"hi".to_vec())),
            })),
        };
        assert_eq!(serde_json::to_string(&event).unwrap(), r#"{"data":{"stdout":"aGk="}}"#);
        let end: ProcessEvent =
            serde_json::from_str(r#"{"end":{"exitCode":3,"exited":true,"status":"exit status 3"}}"#).unwrap();
        let Some(process_event::Event::End(end)) = end.event else { panic!("not an end") };
        assert_eq!((end.exit_code, end.exited), (3, true));
    }
}
