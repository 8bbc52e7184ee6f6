//! The RPC methods this server answers, read from the compiled descriptor sets, so that a new
//! RPC is known everywhere (metric labels, tests that walk every RPC) without a list to keep.

use std::sync::LazyLock;

use prost::Message;

use crate::pb;

/// The descriptor sets of every service the server registers.
const DESCRIPTOR_SETS: [&[u8]; 5] = [
    pb::FILE_DESCRIPTOR_SET,
    crate::envoy_api::FILE_DESCRIPTOR_SET,
    tonic_health::pb::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
];

/// A served method: its full service name and its gRPC path.
pub struct Method {
    pub service: String,
    pub path: String,
}

static SERVED: LazyLock<Vec<Method>> = LazyLock::new(|| {
    let mut methods = Vec::new();
    for bytes in DESCRIPTOR_SETS {
        let set = prost_types::FileDescriptorSet::decode(bytes)
            .expect("descriptor sets compiled into the binary decode");
        for file in set.file {
            for service in &file.service {
                let service_name = format!("{}.{}", file.package(), service.name());
                for method in &service.method {
                    methods.push(Method {
                        path: format!("/{service_name}/{}", method.name()),
                        service: service_name.clone(),
                    });
                }
            }
        }
    }
    methods
});

/// Every method the server answers.
pub fn served() -> &'static [Method] {
    &SERVED
}

/// The paths of `service`'s methods, e.g. every `ServiceAccountAdmin` RPC.
pub fn of_service(service: &str) -> impl Iterator<Item = &'static str> {
    served()
        .iter()
        .filter(move |m| m.service == service)
        .map(|m| m.path.as_str())
}

/// `path` if the server answers it, else `other`: request paths cannot grow a label set.
pub fn label(path: &str) -> &'static str {
    served()
        .iter()
        .find(|m| m.path == path)
        .map_or("other", |m| m.path.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::introspection_api::server::token_introspection_server::SERVICE_NAME as INTROSPECTION;
    use crate::pb::service_account_admin_server::SERVICE_NAME as ADMIN;
    use envoy_types::pb::envoy::service::auth::v3::authorization_server::SERVICE_NAME as ENVOY;

    #[test]
    fn every_rpc_of_every_registered_service_is_known_and_others_are_not() {
        assert_eq!(
            label("/embrace.serviceaccounts.v1.TokenIntrospection/Introspect"),
            "/embrace.serviceaccounts.v1.TokenIntrospection/Introspect"
        );
        assert_eq!(
            label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(
            label("/envoy.service.auth.v3.Authorization/Check"),
            "/envoy.service.auth.v3.Authorization/Check"
        );
        assert_eq!(label("/evil/aaaaaaaaaaaaaaaaaaaaaaaaaaaa"), "other");
        let admin: Vec<&str> = of_service(ADMIN).collect();
        assert!(admin.contains(&"/embrace.serviceaccounts.v1.ServiceAccountAdmin/ListAuditEvents"));
        assert_eq!(admin.len(), 21);
        assert_eq!(of_service(INTROSPECTION).count(), 2);
        assert_eq!(of_service(ENVOY).count(), 1);
        assert_eq!(
            of_service("grpc.reflection.v1alpha.ServerReflection").count(),
            1
        );
    }
}
