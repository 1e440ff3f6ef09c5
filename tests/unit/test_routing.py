"""Category routing of a query and the over-fetch policy."""

from __future__ import annotations

import numpy as np
import pytest

from vsearch.rank.routing import images_to_fetch, route_categories

CATS = ["a", "b", "c", "d"]


def test_routes_to_the_fewest_categories_that_reach_the_mass() -> None:
    probs = np.array([0.1, 0.6, 0.25, 0.05])
    assert route_categories(probs, CATS, 0.5, 3) == ["b"]
    assert route_categories(probs, CATS, 0.8, 3) == ["b", "c"]
    assert route_categories(probs, CATS, 0.9, 3) == ["b", "c", "a"]
    assert route_categories(probs, CATS, 0.99, 3) == ["b", "c", "a"]  # capped at 3
    assert route_categories(probs, CATS, 1.0, 4) == ["b", "c", "a", "d"]
    assert route_categories(np.array([0.25] * 4), CATS, 0.5, 4) == ["a", "b"]  # ties: stable


def test_no_category_model_or_zero_mass_searches_everything() -> None:
    assert route_categories(np.zeros(0), [], 0.9, 3) is None
    assert route_categories(np.array([0.5, 0.5, 0, 0]), CATS, 0.0, 3) is None
    with pytest.raises(ValueError, match="3 probabilities for 4"):
        route_categories(np.ones(3) / 3, CATS, 0.9, 3)


def test_over_fetch() -> None:
    assert images_to_fetch(10) == 40
