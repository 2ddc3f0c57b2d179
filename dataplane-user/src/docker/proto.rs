//! The JSON of Docker's remote network driver and remote IPAM driver
//! protocols, as libnetwork v20.10 speaks them
//! (`drivers/remote/api/api.go`, `ipams/remote/api/api.go`). Field names
//! are Go's. Unknown fields are ignored and absent ones take their zero
//! value, as Go's decoder does: a newer Docker that sends more must still
//! be served.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The media type of every plugin request and answer.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// `netlabel.GenericData`: the `-o KEY=VALUE` map of `network create`.
pub const GENERIC: &str = "com.docker.network.generic";
/// `netlabel.Internal` (`--internal`).
pub const INTERNAL: &str = "com.docker.network.internal";
/// `netlabel.EnableIPv6` (`--ipv6`).
pub const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
/// `netlabel.PortMap`: the `-p` bindings.
pub const PORT_MAP: &str = "com.docker.network.portmap";
/// `netlabel.ExposedPorts`.
pub const EXPOSED_PORTS: &str = "com.docker.network.endpoint.exposedports";
/// `ipamapi.RequestAddressType` and its value for a gateway.
pub const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
pub const GATEWAY_TYPE: &str = "com.docker.network.gateway";

/// `{"Err": "..."}`, and nothing else on success (`{}`).
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrResponse {
    #[serde(rename = "Err")]
    pub err: String,
}

/// `/Plugin.Activate`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Activate {
    pub implements: Vec<&'static str>,
}

/// `driverapi.IPAMData`: one address pool of a network.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamData {
    pub address_space: String,
    /// CIDR.
    pub pool: String,
    /// `IP/PREFIX`.
    pub gateway: String,
    /// name -> `IP/PREFIX`.
    pub aux_addresses: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateNetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    pub options: BTreeMap<String, Value>,
    #[serde(rename = "IPv4Data")]
    pub ipv4_data: Vec<IpamData>,
    #[serde(rename = "IPv6Data")]
    pub ipv6_data: Vec<IpamData>,
}

/// DeleteNetwork, AllocateNetwork's and FreeNetwork's id.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct NetworkRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointInterface {
    /// `IP/PREFIX`, "" when the driver is to choose.
    pub address: String,
    #[serde(rename = "AddressIPv6")]
    pub address_ipv6: String,
    pub mac_address: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateEndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub interface: Option<EndpointInterface>,
    pub options: BTreeMap<String, Value>,
}

/// The interface fields the driver filled in (only those Docker left
/// empty: libnetwork refuses an answer that changes one it gave).
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateEndpointResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<EndpointInterfaceOut>,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInterfaceOut {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub address: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub mac_address: String,
}

/// DeleteEndpoint, EndpointOperInfo, Leave, RevokeExternalConnectivity.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct EndpointRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EndpointInfoResponse {
    pub value: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JoinRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub sandbox_key: String,
    pub options: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceName {
    /// The interface in the daemon's namespace that Docker moves into the
    /// sandbox.
    pub src_name: String,
    /// Docker names it `<prefix><n>` there (eth0, eth1, ...).
    pub dst_prefix: String,
}

#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct JoinResponse {
    pub interface_name: InterfaceName,
    /// "" on an internal network: no default route.
    pub gateway: String,
    pub disable_gateway_service: bool,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProgramExternalConnectivityRequest {
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub options: BTreeMap<String, Value>,
}

/// `types.PortBinding` (libnetwork/types): one `-p` binding.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// IP protocol number: 6 TCP, 17 UDP (132 SCTP, refused).
    pub proto: u8,
    /// The container's address (Docker may leave it empty).
    #[serde(rename = "IP")]
    pub ip: String,
    /// The container port.
    pub port: u16,
    /// "" or 0.0.0.0 for every address.
    #[serde(rename = "HostIP")]
    pub host_ip: String,
    /// 0: any free port.
    pub host_port: u16,
    /// The end of a host port range (`-p 8000-8010:80`), else 0 or
    /// `host_port`.
    pub host_port_end: u16,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CapabilitiesResponse {
    pub scope: &'static str,
    pub connectivity_scope: &'static str,
}

// ----- IPAM ------------------------------------------------------------

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamCapabilities {
    #[serde(rename = "RequiresMACAddress")]
    pub requires_mac_address: bool,
    pub requires_request_replay: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddressSpaces {
    pub local_default_address_space: &'static str,
    pub global_default_address_space: &'static str,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestPoolRequest {
    pub address_space: String,
    /// `--subnet` ("" for any).
    pub pool: String,
    /// `--ip-range`.
    pub sub_pool: String,
    pub options: BTreeMap<String, String>,
    #[serde(rename = "V6")]
    pub v6: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestPoolResponse {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub pool: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ReleasePoolRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RequestAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    /// A given address ("" for any).
    pub address: String,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RequestAddressResponse {
    /// `IP/PREFIX`.
    pub address: String,
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ReleaseAddressRequest {
    #[serde(rename = "PoolID")]
    pub pool_id: String,
    pub address: String,
}
