//! The gRPC services a replica serves. Adding one is one [`Services::add`]: it is routed, and
//! health reports it by name along with the others.

use std::convert::Infallible;
use std::sync::Arc;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Service;

/// A router and the names of the services health reports.
pub(super) struct Services<L> {
    router: Router<L>,
    names: Vec<&'static str>,
}

impl<L> Services<L> {
    /// Services on `router`, which already serves health and reflection.
    pub fn new(router: Router<L>) -> Self {
        Self {
            router,
            names: Vec::new(),
        }
    }

    /// Routes `service` and reports it in health.
    pub fn add<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.router = self.router.add_service(service);
        self
    }

    /// The router to serve, and the health that reports its services.
    pub fn into_parts(self, reporter: HealthReporter) -> (Router<L>, Health) {
        let health = Health {
            reporter,
            services: self.names.into(),
        };
        (self.router, health)
    }
}

/// The server's health: overall (`""`) and per service, always set together.
#[derive(Clone)]
pub(super) struct Health {
    reporter: HealthReporter,
    services: Arc<[&'static str]>,
}

impl Health {
    pub async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        for name in self.services.iter() {
            self.reporter.set_service_status(*name, status).await;
        }
    }
}
