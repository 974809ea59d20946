#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

#[test]
fn messages_round_trip_and_unknown_versions_are_refused() {
    let request = RpcRequest {
        cluster: "c".into(),
        epoch: 4,
        sender: "kv-1".into(),
        body: RequestBody::Read {
            partition: 7,
            key: b"k".to_vec(),
        },
    };
    let bytes = encode(&request);
    let back: RpcRequest = decode(&bytes).unwrap();
    assert_eq!(back.epoch, 4);
    assert!(matches!(back.body, RequestBody::Read { partition: 7, .. }));
    let mut future = bytes.clone();
    future[0] = RPC_VERSION + 1;
    let refused = decode::<RpcRequest>(&future).unwrap_err().to_string();
    assert!(refused.contains("unsupported message version"), "{refused}");
    let mut trailing = bytes;
    trailing.push(0);
    assert!(decode::<RpcRequest>(&trailing).is_err());
    assert!(decode::<RpcRequest>(&[]).is_err());
}

#[test]
fn contract_types_with_absent_optional_fields_round_trip() {
    let config: ClusterConfig = serde_json::from_str(
        r#"{"cluster":"c","epoch":3,"members":[{"id":"kv-0","address":"a:1","peer_address":"a:2"}],
            "n":1,"w":1,"r":1,"partitions":256,"vnodes":64}"#,
    )
    .unwrap();
    let mut transition = config.clone();
    transition.transition_from = Some(kvapi::PriorRing {
        epoch: 2,
        members: config.members.clone(),
        n: 1,
    });
    for config in [config, transition] {
        let bytes = encode(&RpcResponse {
            epoch: 3,
            body: ResponseBody::Config(config.clone()),
        });
        let back: RpcResponse = decode(&bytes).unwrap();
        assert!(matches!(back.body, ResponseBody::Config(c) if c == config));
    }
    let failed = ResponseBody::Failed {
        status: 503,
        error: ErrorBody {
            error: "quorum_not_reached".into(),
            message: "m".into(),
            context: None,
            replied: Some(1),
            required: Some(2),
        },
    };
    let back: RpcResponse = decode(&encode(&RpcResponse {
        epoch: 1,
        body: failed,
    }))
    .unwrap();
    assert!(
        matches!(back.body, ResponseBody::Failed { status: 503, error } if error.replied == Some(1))
    );
}

proptest! {
    #[test]
    fn the_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode::<RpcRequest>(&bytes);
        let _ = decode::<RpcResponse>(&bytes);
    }
}
