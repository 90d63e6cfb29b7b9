"""medulla-guard: fail2ban-style protection against brute force, with nftables sets."""
