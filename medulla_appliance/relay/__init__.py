"""medulla-relay: serves complete packages to agents over HTTP(S) (package role)."""
