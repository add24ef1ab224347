//! tern's gRPC API, generated from the `.proto` files in `proto/` at the workspace root.
//!
//! Every file of `proto/tern/v1/` is compiled by `build.rs` into the [`v1`] module (the protobuf package
//! `tern.v1`): `submission.proto` (the `tern.v1.Submission` service, used by the ingest role) and `admin.proto`
//! (the `tern.v1.QueueAdmin` and `tern.v1.Events` services of the control plane). A new file in that
//! directory is picked up without touching this crate. KEDA's `externalscaler.proto` (`proto/keda/`) is the
//! [`keda`] module.
//!
//! Each service comes with a client (`v1::submission_client::SubmissionClient`) and a server trait with its
//! wrapper (`v1::submission_server::{Submission, SubmissionServer}`). [`v1::FILE_DESCRIPTOR_SET`] describes
//! every file, for gRPC server reflection.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tern_proto::v1::{SendRequest, send_request::Content, submission_client::SubmissionClient};
//!
//! let mut client = SubmissionClient::connect("http://127.0.0.1:7071").await?;
//! let mut request = tonic::Request::new(SendRequest {
//!     content: Some(Content::Raw(b"From: a@example.com\r\nTo: b@example.net\r\n\r\nHi\r\n".to_vec())),
//!     ..Default::default()
//! });
//! request.metadata_mut().insert("authorization", "Bearer <key>".parse()?);
//! let reply = client.send(request).await?.into_inner();
//! println!("queued as {}", reply.message_id);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

/// KEDA's external scaler contract (`proto/keda/externalscaler.proto`, the protobuf package
/// `externalscaler`, Apache-2.0, from the KEDA project): `ExternalScaler`, served by the control plane so
/// that KEDA scales the workers with the due jobs.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod keda {
    tonic::include_proto!("externalscaler");

    /// The encoded `FileDescriptorSet` of `externalscaler.proto`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keda_descriptor");

    /// The fully qualified name of the external scaler service.
    pub const EXTERNAL_SCALER_SERVICE: &str = "externalscaler.ExternalScaler";
}

/// The `tern.v1` protobuf package: messages, clients and servers.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod v1 {
    tonic::include_proto!("tern.v1");

    /// The encoded `FileDescriptorSet` of every `tern.v1` file, for server reflection
    /// (`tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("tern_descriptor");

    /// The fully qualified name of the Submission service.
    pub const SUBMISSION_SERVICE: &str = "tern.v1.Submission";

    /// The fully qualified name of the control plane's queue administration service.
    pub const QUEUE_ADMIN_SERVICE: &str = "tern.v1.QueueAdmin";

    /// The fully qualified name of the control plane's event stream service.
    pub const EVENTS_SERVICE: &str = "tern.v1.Events";

    /// The fully qualified name of the control plane's live SMTP trace service.
    pub const SMTP_TRACE_SERVICE: &str = "tern.v1.SmtpTrace";
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::v1;

    #[test]
    fn descriptor_set_describes_the_submission_service() {
        let fds = prost_types_lite::decode(v1::FILE_DESCRIPTOR_SET);
        assert!(fds.iter().any(|f| f == "tern/v1/submission.proto"), "{fds:?}");
        assert!(fds.iter().any(|f| f == "tern/v1/admin.proto"), "{fds:?}");
    }

    #[test]
    fn keda_descriptor_set_describes_the_external_scaler() {
        let fds = prost_types_lite::decode(super::keda::FILE_DESCRIPTOR_SET);
        assert_eq!(fds, ["keda/externalscaler.proto"]);
    }

    #[test]
    fn messages_round_trip() {
        let req = v1::SendRequest {
            idempotency_key: "k1".into(),
            content: Some(v1::send_request::Content::Raw(b"Subject: x\r\n\r\nhi".to_vec())),
            tags: [("tenant".to_string(), "t1".to_string())].into(),
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        assert_eq!(v1::SendRequest::decode(bytes.as_slice()).unwrap(), req);
    }

    /// Just enough of `google.protobuf.FileDescriptorSet` to list the file names.
    mod prost_types_lite {
        use prost::Message;

        #[derive(Clone, PartialEq, Message)]
        struct FileDescriptorSet {
            #[prost(message, repeated, tag = "1")]
            file: Vec<FileDescriptorProto>,
        }

        #[derive(Clone, PartialEq, Message)]
        struct FileDescriptorProto {
            #[prost(string, optional, tag = "1")]
            name: Option<String>,
        }

        pub fn decode(bytes: &[u8]) -> Vec<String> {
            FileDescriptorSet::decode(bytes)
                .unwrap()
                .file
                .into_iter()
                .filter_map(|f| f.name)
                .collect()
        }
    }
}
