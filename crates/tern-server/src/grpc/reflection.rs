//! Server reflection (`grpc.reflection.v1` and `v1alpha`) that describes exactly what its listener serves.
//!
//! A role's descriptor set may describe more than the role serves (tern-proto's one set holds Submission,
//! QueueAdmin and Events). Listed as they are, a client of the ingest port would see the control plane's
//! services and get `UNIMPLEMENTED` for them. So each listener lists only its own services (plus health and
//! reflection), and registers only the files that define them and the files those import: a symbol of a
//! service served elsewhere is `NOT_FOUND` here too.
//!
//! The files are kept as the encoded bytes they came in, so that nothing (custom options included) is lost
//! in a decode and re-encode.

use std::collections::{BTreeSet, HashMap};

use prost::Message;
use prost_types::FileDescriptorProto;
use tonic::service::RoutesBuilder;

use super::GrpcServerError;

/// A `google.protobuf.FileDescriptorSet` whose files stay encoded: field 1, `repeated FileDescriptorProto`.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedFileSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// The fully qualified names of the services that are on every listener, next to the role's own.
pub const STANDARD_SERVICES: [&str; 3] = [
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// Adds both reflection services to `routes`, describing `services` (fully qualified names) from
/// `descriptor_sets` and the standard services. Every service must be defined in one of the sets.
pub(crate) fn add_reflection(
    routes: &mut RoutesBuilder,
    services: &[&'static str],
    descriptor_sets: &[&'static [u8]],
) -> Result<(), GrpcServerError> {
    let files = files_for(services, descriptor_sets)?;
    let configure = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            // Both versions are served, so either describes both (the builder adds only its own).
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(&files);
        for name in services.iter().chain(&STANDARD_SERVICES) {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    let reflection_error = |e: tonic_reflection::server::Error| GrpcServerError::Reflection(e.to_string());
    routes
        .add_service(configure().build_v1().map_err(reflection_error)?)
        .add_service(configure().build_v1alpha().map_err(reflection_error)?);
    Ok(())
}

/// One encoded descriptor set with the files of `descriptor_sets` that define one of `services`, and the
/// files they import (transitively). A service defined nowhere is an error: reflection would list a service
/// it cannot describe.
pub(crate) fn files_for(services: &[&str], descriptor_sets: &[&[u8]]) -> Result<Vec<u8>, GrpcServerError> {
    let mut by_name: HashMap<String, (FileDescriptorProto, Vec<u8>)> = HashMap::new();
    for set in descriptor_sets {
        let encoded = EncodedFileSet::decode(*set)
            .map_err(|e| GrpcServerError::Reflection(format!("bad descriptor set: {e}")))?;
        for raw in encoded.file {
            let file = FileDescriptorProto::decode(raw.as_slice())
                .map_err(|e| GrpcServerError::Reflection(format!("bad file descriptor: {e}")))?;
            by_name.entry(file.name().to_owned()).or_insert((file, raw));
        }
    }
    let mut wanted: Vec<String> = Vec::new();
    for service in services {
        let defining = by_name.iter().find(|(_, (file, _))| {
            file.service
                .iter()
                .any(|s| qualified(file.package(), s.name()) == *service)
        });
        let Some((name, _)) = defining else {
            return Err(GrpcServerError::Reflection(format!(
                "no descriptor defines the service {service}"
            )));
        };
        wanted.push(name.clone());
    }
    // The files to serve, sorted so that the set is the same from run to run.
    let mut kept: BTreeSet<String> = BTreeSet::new();
    while let Some(name) = wanted.pop() {
        if !kept.insert(name.clone()) {
            continue;
        }
        if let Some((file, _)) = by_name.get(&name) {
            wanted.extend(file.dependency.iter().cloned());
        }
    }
    let file = kept
        .iter()
        .filter_map(|name| by_name.get(name).map(|(_, raw)| raw.clone()))
        .collect();
    Ok(EncodedFileSet { file }.encode_to_vec())
}

/// `package.Name`, or `Name` in the root package.
fn qualified(package: &str, name: &str) -> String {
    if package.is_empty() {
        name.to_owned()
    } else {
        format!("{package}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_names(encoded: &[u8]) -> Vec<String> {
        prost_types::FileDescriptorSet::decode(encoded)
            .unwrap()
            .file
            .iter()
            .map(|f| f.name().to_owned())
            .collect()
    }

    #[test]
    fn only_the_files_of_the_served_services_are_kept() {
        let sets = [tern_proto::v1::FILE_DESCRIPTOR_SET];
        let ingest = files_for(&[tern_proto::v1::SUBMISSION_SERVICE], &sets).unwrap();
        assert_eq!(file_names(&ingest), ["tern/v1/submission.proto"]);
        let control = files_for(
            &[
                tern_proto::v1::QUEUE_ADMIN_SERVICE,
                tern_proto::v1::EVENTS_SERVICE,
            ],
            &sets,
        )
        .unwrap();
        assert_eq!(file_names(&control), ["tern/v1/admin.proto"]);
    }

    #[test]
    fn imports_are_kept_with_the_file_that_needs_them() {
        use prost_types::{FileDescriptorSet, ServiceDescriptorProto};
        let file = |name: &str, dependency: &[&str], service: Option<&str>| FileDescriptorProto {
            name: Some(name.into()),
            package: Some("p".into()),
            dependency: dependency.iter().map(|d| (*d).to_owned()).collect(),
            service: service
                .map(|s| ServiceDescriptorProto {
                    name: Some(s.into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let set = FileDescriptorSet {
            file: vec![
                file("served.proto", &["types.proto"], Some("Served")),
                file("types.proto", &["base.proto"], None),
                file("base.proto", &[], None),
                file("other.proto", &["base.proto"], Some("Other")),
            ],
        }
        .encode_to_vec();
        let kept = files_for(&["p.Served"], &[&set]).unwrap();
        assert_eq!(file_names(&kept), ["base.proto", "served.proto", "types.proto"]);
    }

    #[test]
    fn a_service_without_a_descriptor_is_an_error() {
        let err = files_for(&["tern.v1.Nope"], &[tern_proto::v1::FILE_DESCRIPTOR_SET]).unwrap_err();
        assert!(err.to_string().contains("tern.v1.Nope"), "{err}");
    }
}
