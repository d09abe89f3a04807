"""MineWorld with managed KV caches: an interactive world model you can play on your own hardware."""
