"""medulla-syncthing: drives the local Syncthing so that packages reach the relays, and
offers a package on a relay only once Syncthing has it complete there and its checksums
match (``<packages_root>/.complete/<package_id>``)."""
