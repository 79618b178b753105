//! Kubernetes objects through ferryd (`ferryctl apply`, `delete`, `get`).
//!
//! These requests share ferryd's pod-API socket with the CNI binary
//! without touching its protocol: a line holding one JSON object with the
//! single key `objects` ([`ObjectsEnvelope`]) is one of these; any other
//! line is a [`crate::pod::PodRequest`], as before. The file's text goes
//! to ferryd as it is: ferryd parses and checks it (Kubernetes' own types)
//! and stores all of it or none.

use serde::{Deserialize, Serialize};

use crate::table::{EndpointPolicy, ServicePort};

/// What goes on the wire: `{"objects": {"op": ...}}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ObjectsEnvelope {
    pub objects: ObjectsRequest,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ObjectsRequest {
    /// Create or replace every object of a YAML or JSON file.
    Apply {
        /// The file's name, for errors.
        file: String,
        text: String,
    },
    /// Delete every object the file names (kind, namespace, name).
    Delete { file: String, text: String },
    /// What is stored, and the service ports and endpoint policies
    /// compiled from it.
    Get,
}

/// One stored object, by identity.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectRef {
    /// Kubernetes' kind (`Service`, `EndpointSlice`, ...).
    pub kind: String,
    /// Empty for a Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ObjectsResponse {
    Applied {
        objects: Vec<ObjectRef>,
    },
    Deleted {
        objects: Vec<ObjectRef>,
        /// Named by the file but not stored (not an error, as
        /// `kubectl delete --ignore-not-found`).
        #[serde(default)]
        missing: Vec<ObjectRef>,
    },
    Listing(Box<ObjectListing>),
    Error {
        msg: String,
    },
}

/// The answer to [`ObjectsRequest::Get`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ObjectListing {
    /// Where the objects are kept (`embedded ...`, `etcd ...`).
    pub source: String,
    /// Why ferryd's view may be behind the store, if it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    pub objects: Vec<ObjectRef>,
    /// The service ports compiled from them, by id.
    pub services: Vec<ServicePort>,
    /// Services or ports left out, and why (headless, SCTP, ...).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// Whether the dataplane holds `services`: `synced`, `not connected`,
    /// or what it answered.
    pub dataplane: String,
    /// Every local endpoint with what NetworkPolicy makes of it, by
    /// endpoint id (absent from a ferryd that predates policy).
    #[serde(default)]
    pub policies: Vec<EndpointPolicyView>,
    /// Policy rules left out or resolved in part, and why (a named port
    /// no container has, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_skipped: Vec<String>,
    /// Whether the dataplane holds the endpoint policies, as `dataplane`.
    #[serde(default)]
    pub policy_dataplane: String,
}

/// One local endpoint as NetworkPolicy sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EndpointPolicyView {
    /// The endpoint id (`<container id>/<ifname>`).
    pub endpoint: String,
    /// The pod's namespace and name from the CNI arguments
    /// (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`); without a namespace no
    /// selector matches the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The NetworkPolicies selecting it (`<namespace>/<name>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected_by: Vec<String>,
    /// What the dataplane is given; `None`: selected by no policy, both
    /// directions allow everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EndpointPolicy>,
}
