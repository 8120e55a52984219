//! SecretVM's `x-agent` signatures, exactly as the seed's client computes them: the request
//! hash is `sha256(METHOD + path + body + timestamp)` in hex, and the wallet signs the hash's 32
//! bytes with EIP-191 `personal_sign` (`encode_defunct(hexstr=hash)`). For the multipart
//! `POST /api/vm/create` the signed body is [`create_signing_body`], the stable JSON of the
//! form fields and the file's metadata, written as Python's `json.dumps(…, sort_keys=True,
//! separators=(",", ":"))` writes it (`ensure_ascii`: every character outside printable ASCII
//! escaped as `\uXXXX`, surrogate pairs above the BMP).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

/// The metadata of the uploaded compose file, as the seed's client signs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    /// The form field the file came in (`dockercompose`).
    pub fieldname: String,
    /// The file name the client gave.
    pub originalname: String,
    /// The part's content type.
    pub mimetype: String,
    /// The file's bytes, counted.
    pub size: u64,
    /// The SHA-256 of the file's bytes, lowercase hex.
    pub sha256: String,
}

impl FileMeta {
    /// The metadata of `bytes` received in `fieldname` as `originalname` of type `mimetype`.
    pub fn of(fieldname: &str, originalname: &str, mimetype: &str, bytes: &[u8]) -> FileMeta {
        FileMeta {
            fieldname: fieldname.to_owned(),
            originalname: originalname.to_owned(),
            mimetype: mimetype.to_owned(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        }
    }
}

/// The request hash the seed signs: SHA-256 of `METHOD + path + body + timestamp`, lowercase hex.
pub fn request_hash(method: &str, path: &str, body: &str, timestamp: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(method.to_ascii_uppercase().as_bytes());
    hasher.update(path.as_bytes());
    hasher.update(body.as_bytes());
    hasher.update(timestamp.as_bytes());
    hex::encode(hasher.finalize())
}

/// The body `POST /api/vm/create` signs instead of its multipart bytes:
/// `{"fields":{…},"file":{"fieldname","mimetype","originalname","sha256","size"}}`, keys sorted,
/// compact, ASCII-escaped as Python writes it.
pub fn create_signing_body(fields: &BTreeMap<String, String>, file: &FileMeta) -> String {
    let mut out = String::from("{\"fields\":{");
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        python_string(&mut out, key);
        out.push(':');
        python_string(&mut out, value);
    }
    out.push_str("},\"file\":{\"fieldname\":");
    python_string(&mut out, &file.fieldname);
    out.push_str(",\"mimetype\":");
    python_string(&mut out, &file.mimetype);
    out.push_str(",\"originalname\":");
    python_string(&mut out, &file.originalname);
    out.push_str(",\"sha256\":");
    python_string(&mut out, &file.sha256);
    let _ = write!(out, ",\"size\":{}}}}}", file.size);
    out
}

/// Appends `text` as a JSON string the way Python's `json.dumps` writes it with `ensure_ascii`.
fn python_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0_u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

/// The wallet that signed `hash` (hex of 32 bytes) with `signature`, lowercase `0x…`.
pub fn signer_of(hash: &str, signature: &str) -> Result<String, String> {
    let bytes = hex::decode(hash).map_err(|e| e.to_string())?;
    vendbox_pay::recover_personal_signer(&bytes, signature)
        .map(|a| a.to_string().to_lowercase())
        .map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_hash_is_sha256_of_the_concatenation() {
        // sha256("GET/api/agent/balance1700000000000")
        let expected = hex::encode(Sha256::digest(b"GET/api/agent/balance1700000000000"));
        assert_eq!(request_hash("get", "/api/agent/balance", "", "1700000000000"), expected);
    }

    #[test]
    fn the_create_body_is_written_as_python_writes_it() {
        let fields: BTreeMap<String, String> = [
            ("vmTypeId".to_owned(), "small".to_owned()),
            ("name".to_owned(), "caf\u{e9} \"q\"\n\u{1f600}\u{7f}/".to_owned()),
        ]
        .into_iter()
        .collect();
        let file =
            FileMeta::of("dockercompose", "docker-compose.yml", "application/x-yaml", b"services: {}\n");
        // json.dumps({"fields": fields, "file": meta}, sort_keys=True, separators=(",", ":"))
        let expected = format!(
            "{{\"fields\":{{\"name\":\"caf\\u00e9 \\\"q\\\"\\n\\ud83d\\ude00\\u007f/\",\"vmTypeId\":\"small\"}},\
             \"file\":{{\"fieldname\":\"dockercompose\",\"mimetype\":\"application/x-yaml\",\
             \"originalname\":\"docker-compose.yml\",\"sha256\":\"{}\",\"size\":13}}}}",
            file.sha256
        );
        assert_eq!(create_signing_body(&fields, &file), expected);
    }
}
