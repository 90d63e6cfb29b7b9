"""medulla-pxe: network boot for a Medulla site (TFTP today; boot menus, registration of
unknown machines and proxyDHCP fit beside it as sibling sub-packages)."""
