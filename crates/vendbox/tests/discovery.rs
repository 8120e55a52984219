//! Discovery for agents: the official x402 Bazaar client (`x402.extensions.bazaar`, Python
//! x402 2.25.0, `tests/clients/bazaar_list.py`) lists vendbox's paid resources with their prices
//! from `GET /discovery/resources`, and every declaration passes the facilitator's own check;
//! `GET /` and `/llms.txt` say where to start.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod shop;
mod support;

use serde_json::Value;
use shop::Shop;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_bazaar_client_lists_the_paid_routes_with_their_prices() {
    if !shop::python_client_installed() {
        return;
    }
    let Some(shop) = Shop::open(31337, &[]).await else { return };
    let output = std::process::Command::new("python3")
        .arg(shop::repo_root().join("tests/clients/bazaar_list.py"))
        .arg(&shop.vendbox.url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(seen["x402Version"], 2, "{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "every declaration is valid: {seen}");
    let items = seen["items"].as_array().unwrap();
    assert_eq!(seen["total"].as_u64().unwrap(), u64::try_from(items.len()).unwrap());
    let find = |suffix: &str| {
        items.iter().filter(|i| i["resource"].as_str().unwrap().ends_with(suffix)).collect::<Vec<_>>()
    };
    // A box of each available offer (the default catalog's H3RETIK micro at 0.05), a lock, the paid catalog.
    let boxes = find("/v1/boxes");
    assert!(boxes.len() >= 5, "{seen}");
    assert!(
        boxes
            .iter()
            .all(|b| b["method"] == "POST" && b["amount"].as_str().unwrap().parse::<u64>().unwrap() > 0),
        "{seen}"
    );
    let lock = find("/v1/locks/example-key");
    assert_eq!(lock.len(), 1, "{seen}");
    assert_eq!(lock[0]["amount"], "100", "a lock is 0.0001 USDC: {seen}");
    assert_eq!(find("/catalog").len(), 1, "{seen}");

    let index: Value = reqwest::get(shop.url("/")).await.unwrap().json().await.unwrap();
    assert_eq!(index["links"]["llms_txt"], "/llms.txt", "{index}");
    let llms = reqwest::get(shop.url("/llms.txt")).await.unwrap().text().await.unwrap();
    assert!(llms.contains("POST /v1/boxes") && llms.contains("POST /v1/locks/"), "{llms}");
}
