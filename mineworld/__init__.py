"""MineWorld with managed KV caches: a world model you can play on the hardware you have."""
