"""Caches below the file system core: stat (metadata), memory data, prefetch, disk."""
