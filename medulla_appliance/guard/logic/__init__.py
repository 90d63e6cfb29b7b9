"""medulla-guard's decisions as plain code: counting, ban times, the allowlist, the book."""
