//! A shopping cart kept in kvcluster through several nodes: `Nodes` fails over when a node is down,
//! and `update` merges what concurrent writers left as siblings (here: the union of the items).
//!
//! With a local cluster running (`scripts/up.sh`):
//!
//! ```sh
//! cargo run -p kvclient --example shopping_cart -- apple pear
//! ```

use kvclient::{Client, Nodes, RetryPolicy, WriteOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoints = ["127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"];
    let client = Client::new(endpoints[0])?;
    let nodes = Nodes::new(&client, &endpoints, RetryPolicy::default())?;
    for item in std::env::args().skip(1) {
        nodes
            .update(b"cart/demo", &WriteOptions::default(), |seen| {
                let mut items: Vec<String> = seen
                    .iter()
                    .flat_map(|v| {
                        String::from_utf8_lossy(v)
                            .split(',')
                            .map(str::to_owned)
                            .collect::<Vec<_>>()
                    })
                    .filter(|s| !s.is_empty())
                    .collect();
                items.push(item.clone());
                items.sort();
                items.dedup();
                items.join(",").into_bytes()
            })
            .await?;
    }
    let cart = nodes.get(b"cart/demo", &Default::default()).await?;
    for sibling in cart.live() {
        println!("{}", String::from_utf8_lossy(&sibling.value));
    }
    Ok(())
}
