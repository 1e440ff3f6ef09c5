"""Arrow schemas shared by every stage: catalogue, real-shot queries, click log, embeddings, duplicates.

Image URIs in these tables are either absolute URLs (``s3://b/x.jpg``, ``file:///x.jpg``, ``/abs/x.jpg``)
or paths relative to the folder that holds the table; ``vsearch.storage`` resolves them.
"""

from __future__ import annotations

import pyarrow as pa

#: One row per catalogue image (the clean listing photo of a product).
CATALOG_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        # Category path, levels joined by "/", e.g. "drinks/soda". The full path is the shard key.
        pa.field("category", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        # Free-form attributes as a JSON object string (brand, colour, ...).
        pa.field("attributes", pa.string(), nullable=False),
        # Quality signals for re-ranking, each in [0, 1].
        pa.field("quality", pa.float32(), nullable=False),
        pa.field("popularity", pa.float32(), nullable=False),
    ]
)

#: One row per "real-shot" photo of a product (a shopper's query), with its ground truth.
QUERY_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("image_uri", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        # Which split the photo belongs to: "train", "val" or "test".
        pa.field("split", pa.string(), nullable=False),
        # Subject box [x0, y0, x1, y1] in pixel coordinates of the stored image; null when unknown.
        pa.field("box", pa.list_(pa.float32(), 4), nullable=True),
    ]
)

#: One row per search session: the query photo, what was shown, what was clicked.
CLICK_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query_image_uri", pa.string(), nullable=False),
        pa.field("shown_product_ids", pa.list_(pa.string()), nullable=False),
        pa.field("clicked_product_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)

#: Ground truth for re-uploaded duplicate listings: ``product_id`` duplicates ``duplicate_of``.
DUPLICATE_SCHEMA = pa.schema(
    [
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string(), nullable=False),
        # How the re-upload was made: "crop", "watermark", "title_edit" or a "+"-joined combination.
        pa.field("kind", pa.string(), nullable=False),
    ]
)

#: One row per embedded catalogue image.
EMBEDDING_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema``'s columns, in order and cast to its types.

    Raises ``ValueError`` naming the missing columns when ``table`` lacks any.
    """
    missing = [f.name for f in schema if f.name not in table.column_names]
    if missing:
        raise ValueError(f"table is missing columns {missing}; expected {schema.names}")
    return table.select(schema.names).cast(schema)


#: One row per listing a dedup run compares (a catalogue product, or a row of a matching benchmark).
LISTING_SCHEMA = pa.schema(
    [
        pa.field("listing_id", pa.string(), nullable=False),
        # Which shop or table it came from; ``dedup.cross_source_only`` compares only across sources.
        pa.field("source", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        # Selected attributes (description, manufacturer, ...) as a JSON object string.
        pa.field("attributes", pa.string(), nullable=False),
        # The listing's image, resolved like catalogue URIs; null when it has none.
        pa.field("image_uri", pa.string(), nullable=True),
        pa.field("quality", pa.float32(), nullable=False),
    ]
)

#: Ground truth of a dedup benchmark: listing ``a`` and listing ``b`` are the same product.
MATCH_SCHEMA = pa.schema(
    [
        pa.field("a", pa.string(), nullable=False),
        pa.field("b", pa.string(), nullable=False),
    ]
)

#: One row per candidate pair of a dedup run (``a < b``), with each channel's evidence. A channel
#: that did not propose the pair has a null score and rank.
DEDUP_PAIR_SCHEMA = pa.schema(
    [
        pa.field("a", pa.string(), nullable=False),
        pa.field("b", pa.string(), nullable=False),
        pa.field("image_score", pa.float32(), nullable=True),
        pa.field("text_score", pa.float32(), nullable=True),
        pa.field("lexical_score", pa.float32(), nullable=True),
        pa.field("image_rank", pa.int32(), nullable=True),
        pa.field("text_rank", pa.int32(), nullable=True),
        pa.field("lexical_rank", pa.int32(), nullable=True),
        # The combiner's probability that a and b are the same product, and its decision.
        pa.field("probability", pa.float32(), nullable=False),
        pa.field("duplicate", pa.bool_(), nullable=False),
    ]
)

#: One row per cluster of two or more listings judged to be the same product.
DEDUP_CLUSTER_SCHEMA = pa.schema(
    [
        pa.field("cluster_id", pa.string(), nullable=False),
        pa.field("members", pa.list_(pa.string()), nullable=False),
        pa.field("representative", pa.string(), nullable=False),
    ]
)
