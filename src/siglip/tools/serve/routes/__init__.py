"""The routes of `siglip serve`, one router per purpose; each reaches the shared `Service` as a dependency."""
