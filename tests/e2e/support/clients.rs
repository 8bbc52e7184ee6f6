//! Plaintext gRPC channels and health checks, for in-process servers and child processes.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::wait::Wait;

/// A plaintext channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
}

/// The health of `service` ("" for the whole server) at `addr`, or why it could not be asked.
pub async fn health_status(addr: SocketAddr, service: &str) -> Result<ServingStatus, String> {
    let channel = connect(addr).await.map_err(|e| e.to_string())?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_err(|status| status.to_string())?;
    Ok(response.into_inner().status())
}

/// `Ok` once the server at `addr` answers SERVING, else what it said (a `wait_until` probe).
pub async fn serving(addr: SocketAddr) -> Result<(), String> {
    match health_status(addr, "").await? {
        ServingStatus::Serving => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

/// Connects to a server started as a separate process, once its health says SERVING.
pub async fn connect_when_serving(port: u16) -> Channel {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Wait::new("the server is SERVING")
        .every(Duration::from_millis(50))
        .until(async || serving(addr).await)
        .await;
    connect(addr).await.expect("connect")
}
