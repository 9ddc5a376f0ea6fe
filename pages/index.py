"""Index: the manifest of the loaded index, the other indexes available, and building a new one."""

from __future__ import annotations

import streamlit as st

from gif_core import app_support as sup
from gif_core.errors import GIFError
from gif_core.store import read_manifest

directory = sup.page_index_dir()


def _open_index(path: str) -> None:
    st.session_state["gif_index_dir"] = path
    st.session_state.pop("attribution", None)


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
        st.html(sup.key_value_html(sup.manifest_summary(manifest, directory)))
        with st.expander("Build time per stage"):
            st.dataframe(sup.build_times_table(manifest), hide_index=True, key="build_times")
        with st.expander("Full manifest (JSON)"):
            st.json(manifest, expanded=True)
except GIFError as exc:
    st.error(str(exc))

st.subheader("Available indexes")
roots = [sup.APP_ROOT / "indexes", directory.parent]
listing = sup.list_indexes(roots, current=directory)
if listing.empty:
    st.info(f"No index directories under {', '.join(str(r) for r in roots)}. "
            f"Build one below or with `{sup.BUILD_HINT}`.")
else:
    st.dataframe(listing, hide_index=True, width="stretch", key="index_list")
    ready = [i for i, s, loaded in zip(listing["index"], listing["status"], listing["loaded"],
                                       strict=True) if s == "ready" and not loaded]
    if ready:
        pick, go = st.columns([4, 1], vertical_alignment="bottom")
        chosen = pick.selectbox("Open another index in this session", ready, key="open_choice")
        go.button("Open", key="open_index", on_click=_open_index, args=(chosen,))
    st.caption("Or start the app on one with `streamlit run app.py -- --index DIR`.")

st.subheader("Build a new index")
st.caption("From a .jsonl/.csv/.parquet file (a `text` field and an optional `id`), a folder of "
           f".txt files, or a packaged corpus ({', '.join(sup.PACKAGED_CORPORA)}). The build "
           "writes into a hidden folder and swaps it in when complete, so a failure leaves "
           "every existing index as it was. About a minute per 1,000 samples on a laptop CPU.")
with st.form("build_form"):
    corpus = st.text_input("Corpus", key="build_corpus", placeholder="pkg:fortunes or "
                           "/data/corpus.jsonl")
    out_folder = st.text_input("Output folder", key="build_out",
                               value=str(directory.parent / "new-index"))
    limit = st.number_input("Use only the first N samples (0 = all)", min_value=0, value=0,
                            step=100, key="build_limit")
    replace = st.checkbox("Replace an existing index in that folder", key="build_replace")
    start = st.form_submit_button("Build index", type="primary")

if start:
    progress_box = st.container(border=True)
    bars = {stage: progress_box.progress(0.0, text=f"{stage}: waiting")
            for stage in sup.BUILD_STAGES}

    reported: set[str] = set()

    def _progress(stage: str, done: int, total: int) -> None:
        reported.add(stage)
        if stage not in bars:
            bars[stage] = progress_box.progress(0.0, text=stage)
        frac = min(1.0, done / total) if total else 1.0
        bars[stage].progress(frac, text=f"{stage}: {done:,} / {total:,}")

    try:
        target = sup.build_target(out_folder, directory, replace)
        with st.spinner(f"Building {target}…"):
            built = sup.build_index(corpus, target, limit=int(limit) or None, progress=_progress)
    except (GIFError, OSError) as exc:
        st.error(f"Build failed: {exc}  \nExisting indexes are unchanged.")
    else:
        for stage in set(bars) - reported:
            bars[stage].progress(1.0, text=f"{stage}: not needed for this corpus")
        n = built["counts"]["samples"]
        st.success(f"Built {target}: {n:,} samples in {built['build_ms']['total'] / 1000:,.1f} s. "
                   "Open it above, or with `streamlit run app.py -- --index "
                   f"{target}`.")
