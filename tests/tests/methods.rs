//! Every method through the protocol crate's types (`switchboard_protocol::methods`), on both
//! backends: the params a client builds from them are accepted, and every reply decodes into the
//! method's result type. The wire itself is checked byte by byte elsewhere (`protocol.rs`, raw
//! JSON); this is the contract between the types and the gateway.

use std::time::Duration;

use serde_json::json;
use switchboard_core::history::HistoryRule;
use switchboard_gateway::GatewayConfig;
use switchboard_harness::{GatewayWithTools, Kind, WsClient, every_backend};
use switchboard_protocol::methods::session::{
    Discover, Hello, HelloParams, Initialize, InitializeParams, MCP_VERSIONS, Ping,
};
use switchboard_protocol::methods::tasks::{
    TaskIdParams, TaskStatus, TasksCancel, TasksGet, TasksResult,
};
use switchboard_protocol::methods::tools::{
    CallParams, CallResult, TaskRequest, ToolsCall, ToolsList,
};
use switchboard_protocol::methods::topics::{
    Publish, PublishParams, Subscribe, SubscribeParams, Unsubscribe, UnsubscribeParams,
};
use switchboard_protocol::methods::{Empty, Ignored};
use switchboard_protocol::{ErrorCode, MCP_SUBPROTOCOL};

type Setup = GatewayWithTools;

async fn setup(kind: Kind) -> Setup {
    let mut config = GatewayConfig::dev("methods-node");
    config.tuning.readiness_interval = Duration::from_millis(100);
    config.tuning.registry_interval = Duration::from_millis(100);
    config.tuning.history = vec![HistoryRule::parse("h:*=100").unwrap()];
    GatewayWithTools::start(config, kind).await
}

every_backend!(every_method_speaks_its_types);

async fn every_method_speaks_its_types(kind: Kind) {
    let s = setup(kind).await;
    let mut c = WsClient::connect(&s.gw.ws_url()).await;

    // Session.
    let discovered = c.method::<Discover>(&Ignored {}).await.unwrap();
    assert_eq!(discovered.supported_versions, MCP_VERSIONS);
    let hello = c.method::<Hello>(&HelloParams::default()).await.unwrap();
    assert_eq!(
        (hello.resumed, hello.node.as_str()),
        (false, "methods-node")
    );
    assert_eq!(hello.session.len(), 32);
    assert_eq!(c.method::<Ping>(&Ignored {}).await.unwrap(), Empty {});

    // Topics: a history topic answers its position and ids.
    let sub = c
        .method::<Subscribe>(&SubscribeParams {
            topic: "h:types".into(),
            since: None,
            token: None,
        })
        .await
        .unwrap();
    assert_eq!((sub.topic.as_str(), sub.recovered), ("h:types", None));
    let data = serde_json::value::to_raw_value(&json!({"n": 1})).unwrap();
    let published = c
        .method::<Publish>(&PublishParams {
            topic: "h:types".into(),
            data: &data,
            history: None,
        })
        .await
        .unwrap();
    let id = published
        .id
        .expect("a history topic answers the event's id");
    let event = c.next_event().await;
    assert_eq!(event["id"], id.as_str());
    let replayed = c
        .method::<Subscribe>(&SubscribeParams {
            topic: "h:other".into(),
            since: Some("0-0".into()),
            token: None,
        })
        .await
        .unwrap();
    assert_eq!(replayed.recovered, Some(true));
    let bad = c
        .method::<Subscribe>(&SubscribeParams {
            topic: "no spaces".into(),
            since: None,
            token: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad["code"], ErrorCode::InvalidParams.code());
    c.method::<Unsubscribe>(&UnsubscribeParams {
        topic: "h:types".into(),
    })
    .await
    .unwrap();

    // Tools and tasks.
    c.wait_for_tool("echo").await;
    let tools = c.method::<ToolsList>(&Ignored {}).await.unwrap();
    assert!(tools.tools.iter().any(|t| t.name == "sleep"), "{tools:?}");
    let CallResult::Done(echoed) = c
        .method::<ToolsCall>(&CallParams::new("echo", json!({"hi": 1})))
        .await
        .unwrap()
    else {
        panic!("a plain call answers the tool's result");
    };
    assert_eq!(echoed.structured_content, Some(json!({"hi": 1})));
    assert!(!echoed.is_error);
    let asked = CallParams {
        task: Some(TaskRequest { ttl: Some(60_000) }),
        ..CallParams::new("sleep", json!({"ms": 60_000}))
    };
    let CallResult::Task(created) = c.method::<ToolsCall>(&asked).await.unwrap() else {
        panic!("a call with `task` answers the task");
    };
    let task = TaskIdParams {
        task_id: created.task.task_id.clone(),
    };
    let got = c.method::<TasksGet>(&task).await.unwrap();
    assert_eq!(
        (got.task_id.as_str(), got.status),
        (task.task_id.as_str(), TaskStatus::Working)
    );
    let cancelled = c.method::<TasksCancel>(&task).await.unwrap();
    assert_eq!(cancelled.status, TaskStatus::Cancelled);
    let result = c.method::<TasksResult>(&task).await.unwrap();
    assert!(
        result.is_error,
        "a cancelled task's result says so: {result:?}"
    );

    // MCP: `initialize` on its own socket.
    let mut m = WsClient::connect_with(
        &s.gw.ws_url(),
        &[("Sec-WebSocket-Protocol", MCP_SUBPROTOCOL)],
    )
    .await;
    let init = m
        .method::<Initialize>(&InitializeParams {
            protocol_version: Some("2025-06-18".into()),
        })
        .await
        .unwrap();
    assert_eq!(init.protocol_version, "2025-06-18");
    assert_eq!(init.server_info.name, "switchboard");
}
