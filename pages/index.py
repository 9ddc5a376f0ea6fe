"""Index: the manifest of the loaded index and the other indexes available."""

from __future__ import annotations

import streamlit as st

from gif_core import app_support as sup
from gif_core.errors import GIFError
from gif_core.store import read_manifest

directory = sup.page_index_dir()

st.title("Index")
try:
    problem = sup.index_problem(directory)
    if problem:
        st.error(problem)
    else:
        manifest = read_manifest(directory)
        counts = manifest.get("counts", {})
        c1, c2, c3 = st.columns(3)
        c1.metric("Samples", f"{counts.get('samples', 0):,}")
        c2.metric("Clusters", f"{counts.get('clusters', 0):,}")
        c3.metric("Build time", f"{manifest.get('build_ms', {}).get('total', 0) / 1000:,.1f} s")
        st.subheader("Manifest")
        st.dataframe(sup.manifest_summary(manifest, directory), hide_index=True,
                     width="stretch", key="manifest_table")
        with st.expander("Build time per stage"):
            st.dataframe(sup.build_times_table(manifest), hide_index=True, key="build_times")
        with st.expander("Full manifest (JSON)"):
            st.json(manifest, expanded=False)
except GIFError as exc:
    st.error(str(exc))

st.subheader("Available indexes")
roots = [sup.APP_ROOT / "indexes", directory.parent]
listing = sup.list_indexes(roots, current=directory)
if listing.empty:
    st.info(f"No index directories under {', '.join(str(r) for r in roots)}. "
            f"Build one with `{sup.BUILD_HINT}`.")
else:
    st.dataframe(listing, hide_index=True, width="stretch", key="index_list")
    st.caption("Open another with `streamlit run app.py -- --index DIR`.")
