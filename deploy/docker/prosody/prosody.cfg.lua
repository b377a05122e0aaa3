-- Prosody for the compose profile `prosody` (docker-compose.yml): a local
-- XMPP server with publish-subscribe for the tagpoll XMPP bridge, on the
-- compose network. Plaintext c2s with plain auth: for a closed event network
-- only. For anything public, use a real XMPP server with TLS and set
-- TAGPOLL_XMPP_ALLOW_PLAINTEXT=0.
pidfile = "/var/lib/prosody/prosody.pid"
data_path = "/var/lib/prosody"
certificates = "/var/lib/prosody/certs"
interfaces = { "*" }
c2s_ports = { 5222 }
s2s_ports = { }
component_ports = { }
http_ports = { }
https_ports = { }
c2s_direct_tls_ports = { }
modules_enabled = { "roster", "saslauth", "disco", "ping" }
modules_disabled = { "s2s", "tls", "posix" }
-- Prosody 0.12 lets only admins create pubsub nodes: the bridge is one.
admins = { "tagpoll@tagpoll.local" }
authentication = "internal_hashed"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
allow_registration = false
log = { { levels = { min = "info" }, to = "console" } }
VirtualHost "tagpoll.local"
Component "pubsub.tagpoll.local" "pubsub"
  expose_publisher = true
