"""Clusters: a UMAP map of the index, coloured by pseudo-label, with the last query placed."""

from __future__ import annotations

import streamlit as st

from gif_core import app_support as sup
from gif_core.errors import GIFError

engine = sup.page_engine()
directory = sup.page_index_dir()

st.title("Map of the index")
n = len(engine)
shown = min(n, sup.UMAP_MAX_POINTS)
image_index = engine.modality == "image"
st.caption(f"UMAP of the encoder embeddings of {shown:,} of {n:,} "
           f"{'images' if image_index else 'samples'} (seeded sample), coloured by the "
           "pseudo-label (k-means cluster) the probe is trained to predict. Hover a point for "
           f"its id and {'caption' if image_index else 'first words'}.")

last = st.session_state.get("last_query")
if last and last.get("index") != str(directory):
    last = None

try:
    m = sup.cached_umap(engine, directory, need_model=last is not None)
    frame = sup.cached_map_frame(engine, directory, m.rows, m.coords)
    placed = None
    if last is not None:
        placed = sup.place_query(engine, m.model, m.rows, m.coords,
                                 last.get("image") or last["text"], last["source_ids"][:5])
except GIFError as exc:
    st.error(str(exc))
    st.stop()

st.plotly_chart(sup.clusters_figure(frame, placed), width="stretch",
                key="clusters_chart")
if placed is None:
    st.info(f"Trace {'an image or a text' if image_index else 'a text'} on the Attribute page "
            "to place it and its top sources on this map.")
else:
    what = (f"your last query (the image {last['image'].name})" if last.get("image")
            else "your last query")
    st.caption(f"★ {what} and ◆ its top 5 sources (numbers are ranks), placed with the "
               "fitted UMAP model's transform; sources already in the mapped sample keep their "
               "positions.")
    st.dataframe(placed[["kind", "rank", "id", "placed", "x", "y"]], hide_index=True,
                 key="placed_table")
st.caption(f"{frame['label'].nunique()} clusters shown; map "
           f"{'read from the disk cache' if m.from_cache else 'fitted in this server'}.")
