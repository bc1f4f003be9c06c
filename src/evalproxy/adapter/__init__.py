"""The proxy itself: config, chain, server, upstream transport."""
