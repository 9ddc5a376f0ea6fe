"""Attribute: paste a model output (or, on an image index, upload an image) and see the training
samples it most likely came from."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from gif_core import app_support as sup
from gif_core.errors import GIFError

backend = sup.page_backend()
try:
    image_index = backend.modality == "image"
except GIFError as exc:
    st.error(str(exc))
    st.stop()

if image_index:
    st.title("Where did this image come from?")
    st.caption(f"Ranks the {backend.size():,} images of the loaded index by how likely each is "
               "the source of an image (or of a text, through the shared embedding space and "
               "the captions), from embedding similarity, perceptual hashes, caption BM25 and "
               "influence on GIF's probe, with a calibrated confidence that abstains when no "
               "image is a likely source.")
else:
    st.title("Where did this text come from?")
    st.caption(f"Ranks the {backend.size():,} training samples of the loaded index by how "
               "likely each is the source of the text, from embedding similarity, BM25, "
               "verbatim overlap and influence on GIF's probe, with a calibrated confidence "
               "that abstains when no sample is a likely source.")
if backend.remote:
    st.info(f"Querying the `gif serve` backend at {backend.url}.", icon=":material/cloud:")


def _use_example(text: str) -> None:
    st.session_state["query_text"] = text
    st.session_state["run_pending"] = True


def _take_upload(key: str, reader, target: str, *, clear_target: bool) -> None:
    """Read the uploader ``key`` through ``reader`` into ``target``, or keep its error under
    ``KEY_error``; an image upload clears the previous image first (a pasted text stays)."""
    upload = st.session_state.get(key)
    st.session_state.pop(f"{key}_error", None)
    if clear_target:
        st.session_state.pop(target, None)
    if upload is None:
        return
    try:
        st.session_state[target] = reader(upload.name, upload.getvalue())
    except GIFError as exc:
        st.session_state[f"{key}_error"] = str(exc)


def _read_image_upload() -> None:
    _take_upload("image_upload", sup.read_image_upload, "query_image", clear_target=True)


def _read_upload() -> None:
    _take_upload("upload", sup.read_upload, "query_text", clear_target=False)


mode = "text"
if image_index and backend.images_supported:
    mode = st.radio("Trace", ["image", "text"], key="query_mode", horizontal=True,
                    format_func={"image": "an image", "text": "a text (text → image)"}.get)
elif image_index:
    st.info("The backend takes text queries only; texts are matched to the images through the "
            "shared space and the captions. To trace an image, clear the backend URL (the index "
            "in this process) or run `gif query INDEX --image FILE` where the index is.")

text = ""
query_image = None
if mode == "image":
    st.file_uploader(sup.image_upload_label(), type=list(sup.IMAGE_UPLOAD_TYPES),
                     key="image_upload", on_change=_read_image_upload,
                     max_upload_size=sup.IMAGE_UPLOAD_WIDGET_MB)
    if st.session_state.get("image_upload_error"):
        st.error(st.session_state["image_upload_error"])
    query_image = st.session_state.get("query_image")
    if query_image is not None:
        st.image(query_image.thumbnail, width=sup.THUMB_SIDE,
                 caption=f"{query_image.name}: {query_image.width}×{query_image.height} "
                         f"{query_image.format}, SHA-256 {query_image.sha256[:16]}…")
else:
    examples = [] if image_index else sup.load_examples()
    if examples:
        st.write("New here? Try an example:")
        cols = st.columns(len(examples))
        for i, (col, ex) in enumerate(zip(cols, examples, strict=True)):
            col.button(ex.label, key=f"example_{i}", on_click=_use_example, args=(ex.text,),
                       help=ex.text, width="stretch")

    text = st.text_area("Text to trace" if image_index else "Model output", key="query_text",
                        height=120 if image_index else 170,
                        placeholder=("Describe or paste the text to match against the images…"
                                     if image_index else "Paste the text a model produced…"))
    with st.expander("…or upload a text file"):
        st.file_uploader(f"A .txt or .md file, UTF-8, at most {sup.MAX_UPLOAD_BYTES:,} bytes",
                         key="upload", on_change=_read_upload,
                         max_upload_size=sup.TEXT_UPLOAD_WIDGET_MB)
    if st.session_state.get("upload_error"):
        st.error(st.session_state["upload_error"])

k = st.slider("Results to show (k)", min_value=1, max_value=max(1, min(50, backend.size())),
              value=min(10, max(1, backend.size())), key="k")
submitted = st.button("Trace sources", type="primary")

if submitted or st.session_state.pop("run_pending", False):
    try:
        with st.spinner("Tracing…"):
            att = (backend.attribute_image(query_image, k) if mode == "image"
                   else backend.attribute(text, k))
    except GIFError as exc:
        st.session_state.pop("attribution", None)
        st.error(str(exc))
        st.stop()
    except OSError as exc:
        st.session_state.pop("attribution", None)
        st.error(f"The index files could not be read ({exc}). The index may have been moved or "
                 f"deleted: rebuild it, or open another one on the Index page.")
        st.stop()
    st.session_state["attribution"] = {"text": text, "image": query_image, "att": att,
                                       "index": backend.label, "k": k}
    # the Clusters page places the last query (a text, or an image) and its top sources
    st.session_state["last_query"] = {"text": text, "index": backend.label,
                                      "image": query_image if mode == "image" else None,
                                      "source_ids": [r.id for r in att.results]}

stored = st.session_state.get("attribution")
if not stored or stored["index"] != backend.label:
    st.stop()

att, query, image = stored["att"], stored["text"], stored.get("image")
result_key = f"{att.query_sha256}:{len(att.results)}:{backend.label}"
if image is not None and (query_image is None or query_image.sha256 != image.sha256):
    st.caption(f"Results below are for the previous image, {image.name}; press "
               f"**Trace sources** to update.")
elif image is None and query != text:
    st.caption("Results below are for the previous text; press **Trace sources** to update.")

v = sup.verdict(att, image=image is not None)
if v.found:
    st.success(f"**{v.headline}**  \n{v.detail}")
    st.subheader("Ranked candidates")
else:
    st.warning(f"**{v.headline}**  \n{v.detail}", icon=":material/help:")
    st.subheader("Nearest candidates (not established sources)")
    st.caption(sup.NO_SOURCE_CAPTION)
st.dataframe(sup.results_table(att, image=image is not None), hide_index=True, width="stretch",
             key="results_table")

fig = sup.influence_figure(att)
if fig is not None:
    st.plotly_chart(fig, width="stretch", key="influence_chart")
    st.caption(sup.INFLUENCE_CAPTION)
else:
    st.info("Influence was not computed for this query.")

if att.results and image_index:
    st.subheader("Query and ranked sources")
    thumbs = sup.cached_thumbnails(att.results)
    st.html(sup.image_gallery_html(att, thumbs, query=image, query_text=query))
if att.results and image is not None:
    st.subheader("Side by side")
    options = [f"{r.rank}. {r.id}" for r in att.results]
    choice = st.selectbox("Result to compare with the query", options, index=0,
                          key=f"inspect_{att.query_sha256[:12]}_{len(options)}")
    result = att.results[options.index(choice)]
    source = sup.cached_thumbnails([result], sup.COMPARE_SIDE)[0]
    st.html(sup.image_compare_html(image, result, source))
elif att.results:
    st.subheader("Shared passages")
    options = [f"{r.rank}. {r.id}" for r in att.results]
    choice = st.selectbox("Result to compare with the query", options, index=0,
                          key=f"inspect_{att.query_sha256[:12]}_{len(options)}")
    result = att.results[options.index(choice)]
    try:
        source = backend.source_text(result)
    except GIFError as exc:
        st.error(str(exc))
    else:
        st.caption(sup.span_summary(query, result.spans))
        if backend.remote:
            st.caption("The backend returns the opening of each source; spans beyond it are "
                       "not highlighted.")
        st.html(sup.side_by_side_html(query, source, result.spans, result.id))

st.subheader("Check and export")
cf_col, ev_col = st.columns(2)

with cf_col:
    st.markdown("**Counterfactual check**")
    st.caption(f"Retrains GIF's probe without the top {len(att.results)} results, and without "
               f"as many random samples ({sup.COUNTERFACTUAL_CONTROLS} draws), and compares "
               f"the query's loss. Takes seconds to a minute.")
    if backend.remote:
        st.caption("Needs the index in this process; not available through a backend URL.")
    elif st.button("Run counterfactual check", key="run_counterfactual",
                   disabled=not att.results):
        try:
            with st.spinner("Retraining the probe without the top results and the controls…"):
                cf = sup.counterfactual_check(backend.engine, image or query,
                                              len(att.results))
        except GIFError as exc:
            st.error(str(exc))
        else:
            st.session_state["counterfactual"] = {"key": result_key, "cf": cf}
    done = st.session_state.get("counterfactual")
    if done and done["key"] == result_key:
        cf = done["cf"]
        st.info(cf.sentence)
        st.plotly_chart(sup.counterfactual_figure(cf), width="stretch",
                        key="counterfactual_chart")
        st.caption(sup.COUNTERFACTUAL_CAPTION + f" ({cf.seconds:.1f} s)")

with ev_col:
    st.markdown("**Evidence package**")
    if image is not None:
        st.caption("A zip with evidence.json (the SHA-256, size and format of the uploaded "
                   "image, result hashes, index manifest and its hash, model hashes, versions, "
                   "the command that reproduces the result), the uploaded image byte for byte, "
                   "and an HTML report with thumbnails of the query and its sources; "
                   "`gif verify` re-runs it.")
    else:
        st.caption("A zip with evidence.json (query and result hashes, index manifest and its "
                   "hash, model hashes, versions, the command that reproduces the result) and an "
                   "HTML report; `gif verify` re-runs it.")
    if st.button("Export evidence", key="export_evidence"):
        try:
            with st.spinner("Writing the evidence package…"):
                path = sup.export_evidence_zip(backend, image if image is not None else query,
                                               stored["k"])
        except GIFError as exc:
            st.error(str(exc))
        else:
            st.session_state["evidence"] = {"key": result_key, "path": str(path)}
            st.session_state.pop("verified", None)
    ev = st.session_state.get("evidence")
    if ev and ev["key"] == result_key and Path(ev["path"]).is_file():
        st.caption(f"Written to `{ev['path']}`")
        st.download_button("Download evidence (.zip)", Path(ev["path"]).read_bytes(),
                           file_name=Path(ev["path"]).name, mime="application/zip",
                           key="download_evidence")
        if st.button("Verify evidence", key="verify_evidence"):
            try:
                with st.spinner("Re-running the query and comparing…"):
                    outcome = sup.verify_package(backend, Path(ev["path"]))
            except GIFError as exc:
                outcome = sup.VerifyOutcome(False, str(exc), [])
            st.session_state["verified"] = {"path": ev["path"], "outcome": outcome}
        checked = st.session_state.get("verified")
        if checked and checked["path"] == ev["path"]:
            outcome = checked["outcome"]
            if outcome.ok:
                st.success(f"Verification passed: {outcome.message}")
            else:
                st.error(f"Verification failed: {outcome.message}")
                for line in outcome.differences[:20]:
                    st.text(line)

with st.expander("Timings per stage"):
    st.dataframe(sup.timings_table(att), hide_index=True)
    if att.solver:
        st.caption(f"influence solver: {att.solver}")

st.download_button("Download result (JSON)", json.dumps(att.to_dict(), ensure_ascii=False,
                                                         indent=2),
                   file_name=f"gif-{att.query_sha256[:12]}.json", mime="application/json")
