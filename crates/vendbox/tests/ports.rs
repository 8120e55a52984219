//! Ports in: a server listening in a box answers through `/v1/boxes/{id}/ports/{port}/…` and by
//! host name (`{port}-{id}.{ports_domain}`) with the box's token, whatever the method (HEAD,
//! OPTIONS and methods HTTP does not name pass as GET does), WebSocket upgrades pass both ways,
//! and another box's token is refused. Boxes here have no egress: the way in is boxd's
//! tunnel, not the box's network.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boxhost;
mod support;

use boxhost::{Bought, BoxHost};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DOMAIN: &str = "boxes.vendbox.test";

/// A WebSocket echo server on the box's loopback port 8765, in Python's standard library only.
const ECHO: &str = r#"
import base64, hashlib, socket, threading
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(c):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            return
        data += chunk
    head = data.split(b"\r\n\r\n")[0].decode()
    key = [l.split(":", 1)[1].strip() for l in head.split("\r\n") if l.lower().startswith("sec-websocket-key")][0]
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    c.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
    f = c.makefile("rb")
    while True:
        h = f.read(2)
        if len(h) < 2:
            return
        op, n = h[0] & 15, h[1] & 127
        if n == 126:
            n = int.from_bytes(f.read(2), "big")
        mask = f.read(4) if h[1] & 128 else b"\0\0\0\0"
        p = bytes(b ^ mask[i % 4] for i, b in enumerate(f.read(n)))
        if op == 8:
            return
        c.sendall(bytes([0x80 | op, len(p)]) + p)
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8765))
s.listen()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// A hostile server on port 8002: its answer's head never ends within 64 KiB.
const HUGE_HEAD: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8002))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(65536)
    try:
        c.sendall(b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * (8 << 20))
    except OSError:
        pass
    c.close()
"#;

/// A server on port 8003 that answers any method with the method and path it got.
const ANY_METHOD: &str = r#"
import http.server
class Echo(http.server.BaseHTTPRequestHandler):
    def __getattr__(self, name):
        if not name.startswith("do_"):
            raise AttributeError(name)
        def answer():
            body = ("%s %s\n" % (self.command, self.path)).encode()
            self.send_response(200)
            self.send_header("X-Method", self.command)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        return answer
http.server.ThreadingHTTPServer(("127.0.0.1", 8003), Echo).serve_forever()
"#;

async fn get(host: &BoxHost, path: &str, token: Option<&str>, host_name: Option<&str>) -> (u16, String) {
    let mut request = host.http.get(host.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(name) = host_name {
        request = request.header("host", name);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Starts `line` in box `b` in the background, and waits until port `port` answers in it.
async fn serve(host: &BoxHost, b: &Bought, line: &str, port: u16) {
    host.ok(b, &format!("cd /tmp && (nohup {line} >/tmp/server.log 2>&1 &)")).await;
    let probe = format!(
        "for i in $(seq 100); do bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null && exit 0; sleep 0.05; done; exit 1"
    );
    host.ok(b, &probe).await;
}

#[tokio::test]
async fn a_server_in_a_box_answers_by_path_and_by_host_name_to_the_boxs_token_only() {
    let Some(host) = BoxHost::start_with("", &[("VENDBOX_SERVER__PORTS_DOMAIN", DOMAIN)]) else { return };
    let a = host.buy("test-box", 10).await;
    let b = host.buy("test-box", 10).await;
    host.ok(&a, "mkdir -p /tmp/site/sub && echo 'hello from box a' > /tmp/site/index.html && echo deep > /tmp/site/sub/x.txt")
        .await;
    serve(&host, &a, "python3 -m http.server 8000 --directory /tmp/site", 8000).await;

    let root = format!("/v1/boxes/{}/ports/8000/", a.id);
    let (status, body) = get(&host, &root, Some(&a.token), None).await;
    assert_eq!((status, body.as_str()), (200, "hello from box a\n"));
    let (status, body) = get(&host, &format!("{root}sub/x.txt?q=1"), Some(&a.token), None).await;
    assert_eq!((status, body.as_str()), (200, "deep\n"));

    // By host name: the box's server sees its own paths.
    let name = format!("8000-{}.{DOMAIN}", a.id);
    let (status, body) = get(&host, "/sub/x.txt", Some(&a.token), Some(&name)).await;
    assert_eq!((status, body.as_str()), (200, "deep\n"));
    let (status, body) = get(&host, "/", Some(&a.token), Some(&name)).await;
    assert_eq!((status, body.as_str()), (200, "hello from box a\n"));
    // A box host name reaches only the box, never the API.
    let (status, _) = get(&host, "/healthz", Some(&a.token), Some(&name)).await;
    assert_eq!(status, 404);

    // No token, another box's token: refused, both ways in.
    for (token, code) in [(None, "missing_token"), (Some(b.token.as_str()), "bad_token")] {
        let (status, body) = get(&host, &root, token, None).await;
        assert!([401, 403].contains(&status), "{status} {body}");
        assert!(body.contains(code), "{body}");
        let (status, body) = get(&host, "/", token, Some(&name)).await;
        assert!([401, 403].contains(&status), "{status} {body}");
    }
    // The bearer is not passed on to the box.
    let log = host.ok(&a, "cat /tmp/server.log").await;
    assert!(!log.contains(&a.token), "{log}");

    // Every method passes, by path and by host name, with what it answers (HEAD: no body).
    host.ok(&a, &format!("cat > /tmp/any.py <<'EOF'\n{ANY_METHOD}\nEOF")).await;
    serve(&host, &a, "python3 /tmp/any.py", 8003).await;
    let by_name = format!("8003-{}.{DOMAIN}", a.id);
    for method in ["HEAD", "OPTIONS", "PROPFIND", "GET", "DELETE"] {
        for (path, host_name) in [
            (format!("/v1/boxes/{}/ports/8003/sub?q=1", a.id), None),
            ("/sub?q=1".to_owned(), Some(&by_name)),
        ] {
            let mut request = host
                .http
                .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), host.url(&path))
                .bearer_auth(&a.token);
            if let Some(name) = host_name {
                request = request.header("host", name);
            }
            let response = request.send().await.unwrap();
            let (status, seen) = (response.status().as_u16(), response.headers().get("x-method").cloned());
            let body = response.text().await.unwrap();
            assert_eq!(status, 200, "{method} {path} ({host_name:?}): {body}");
            assert_eq!(seen.as_ref().and_then(|v| v.to_str().ok()), Some(method), "{method} {path}");
            let expected = if method == "HEAD" { String::new() } else { format!("{method} /sub?q=1\n") };
            assert_eq!(body, expected, "{method} {path} ({host_name:?})");
        }
        // Without the box's token, refused like GET.
        let request = host.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            host.url(&format!("/v1/boxes/{}/ports/8003/", a.id)),
        );
        let status = request.bearer_auth(&b.token).send().await.unwrap().status().as_u16();
        assert!([401, 403].contains(&status), "{method} with another box's token: {status}");
    }

    // A server whose answer is not a bounded HTTP head.
    host.ok(&a, &format!("cat > /tmp/huge.py <<'EOF'\n{HUGE_HEAD}\nEOF")).await;
    serve(&host, &a, "python3 /tmp/huge.py", 8002).await;
    let (status, body) = get(&host, &format!("/v1/boxes/{}/ports/8002/", a.id), Some(&a.token), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("bad_gateway"), "{body}");

    // A port nobody listens on.
    let (status, body) = get(&host, &format!("/v1/boxes/{}/ports/8001/", a.id), Some(&a.token), None).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("port_closed"), "{body}");
}

#[tokio::test]
async fn a_websocket_echo_works_through_the_port() {
    let Some(host) = BoxHost::start() else { return };
    let a = host.buy("test-box", 10).await;
    host.ok(&a, &format!("cat > /tmp/echo.py <<'EOF'\n{ECHO}\nEOF")).await;
    serve(&host, &a, "python3 /tmp/echo.py", 8765).await;

    let addr = host.vendbox.as_ref().unwrap().addr();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET /v1/boxes/{}/ports/8765/chat HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        a.id, a.token
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "the answer ended: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    for message in ["hello ws", "a second message"] {
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut frame = vec![0x81, 0x80 | u8::try_from(message.len()).unwrap()];
        frame.extend(mask);
        frame.extend(message.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        stream.write_all(&frame).await.unwrap();
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.unwrap();
        assert_eq!(header[0], 0x81);
        let mut payload = vec![0u8; usize::from(header[1] & 0x7f)];
        stream.read_exact(&mut payload).await.unwrap();
        assert_eq!(String::from_utf8(payload).unwrap(), message);
    }
}
