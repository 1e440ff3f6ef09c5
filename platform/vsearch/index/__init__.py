"""Binary sharded index: sign codes searched by Hamming distance, rescored with float vectors."""

from vsearch.index.builder import BuiltShard, bucket_of, build_shards, shard_name
from vsearch.index.codec import BinaryCodec
from vsearch.index.manifest import Manifest, ShardEntry, sha256_hex, verify
from vsearch.index.searcher import Hit, ShardedIndex, merge_topk
from vsearch.index.shard import META_COLUMNS, SHARD_FILES, ShardIndex, l2_normalise

__all__ = [
    "META_COLUMNS",
    "SHARD_FILES",
    "BinaryCodec",
    "BuiltShard",
    "Hit",
    "Manifest",
    "ShardEntry",
    "ShardIndex",
    "ShardedIndex",
    "bucket_of",
    "build_shards",
    "l2_normalise",
    "merge_topk",
    "sha256_hex",
    "shard_name",
    "verify",
]
