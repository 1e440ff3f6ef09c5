"""The HTTP API's documented shapes (OpenAPI, ``docs/openapi.json``). The ingress builds its
answers as plain dicts; these models describe them for clients and are not used to validate."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class SearchResult(BaseModel):
    """One product found: the catalogue image that matched best, and its scores."""

    product_id: str
    image_id: str = Field(description="fetch it from GET /images/{image_id}")
    category: str
    title: str
    score: float = Field(description="the ranking score (photo, quality signals, text)")
    similarity: float = Field(description="cosine similarity of the photo to image_id")
    matched_images: int = Field(description="images of this product among the hits")
    text_similarity: float | None = Field(
        None, description="hybrid queries: the text's similarity to the product's title"
    )


class CategoryGuess(BaseModel):
    name: str
    probability: float


class SearchResponse(BaseModel):
    """The answer to ``POST /search``."""

    index_version: str
    model_version: str
    took_ms: float
    timings_ms: dict[str, float] = Field(
        description="read, decode, embed, vote (the category vote's search), search, rerank "
        "and total, in milliseconds"
    )
    category: CategoryGuess | None = Field(
        description="the predicted category: the category head's softmax fused with the vote "
        "of the nearest labelled images, catalogue images or the index's reference photos "
        "(null: the model has no category head)"
    )
    searched_categories: list[str] | None = Field(
        description="the categories whose shards were searched (null: all)"
    )
    routed_by: str = Field(description="model, request (the categories parameter) or all")
    text: str | None = Field(description="the words of a hybrid query")
    box: list[float] = Field(description="the subject: x0, y0, x1, y1 as fractions of the photo")
    results: list[SearchResult]


class ErrorDetail(BaseModel):
    """Every refusal: the reason first, before a colon, then what went wrong."""

    detail: str


class Product(BaseModel):
    product_id: str
    title: str
    category: str
    images: list[str]


class Health(BaseModel):
    status: str
    index_version: str
    model_version: str
    shards: int
    catalog_images: int
    reference_photos: int = Field(
        0, description="labelled photos that only the category vote searches (0: none)"
    )
    categories: list[str]
    reload_error: str | None


#: The request bodies ``POST /search`` accepts (the ingress reads the body itself, streaming it
#: under its size limit, so FastAPI cannot derive them).
SEARCH_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "text": {"type": "string", "description": "words of a hybrid query"},
                },
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "byte", "description": "base64"},
                    "text": {"type": "string", "description": "words of a hybrid query"},
                },
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for refusals with a reason."""
    text = {
        400: "no or unreadable image, bad JSON or base64, text too long or not indexed",
        401: "a token is required and is missing or wrong",
        404: "no such product or image",
        413: "upload or image too large",
        415: "image format not allowed",
        429: "rate limit passed (Retry-After)",
    }
    return {c: {"model": ErrorDetail, "description": text[c]} for c in codes}
