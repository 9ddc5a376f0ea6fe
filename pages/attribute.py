"""Attribute: paste a model output and see the training samples it most likely came from."""

from __future__ import annotations

import json

import streamlit as st

from gif_core import app_support as sup
from gif_core.errors import GIFError

engine = sup.page_engine()
directory = str(sup.page_index_dir())

st.title("Where did this text come from?")
st.caption(f"Ranks the {len(engine):,} training samples of the loaded index by how likely each "
           "is the source of the text, from embedding similarity, BM25, verbatim overlap and "
           "influence on GIF's probe, with a calibrated confidence that abstains when no "
           "sample is a likely source.")


def _use_example(text: str) -> None:
    st.session_state["query_text"] = text
    st.session_state["run_pending"] = True


examples = sup.load_examples()
if examples:
    st.write("Try an example:")
    cols = st.columns(len(examples))
    for i, (col, ex) in enumerate(zip(cols, examples, strict=True)):
        col.button(ex.label, key=f"example_{i}", on_click=_use_example, args=(ex.text,),
                   help=ex.text, width="stretch")

text = st.text_area("Model output", key="query_text", height=170,
                    placeholder="Paste the text a model produced…")
k = st.slider("Results to show (k)", min_value=1, max_value=min(50, len(engine)),
              value=min(10, len(engine)), key="k")
submitted = st.button("Trace sources", type="primary")

if submitted or st.session_state.pop("run_pending", False):
    try:
        with st.spinner("Tracing…"):
            att = sup.attribute(engine, text, k)
    except GIFError as exc:
        st.session_state.pop("attribution", None)
        st.error(str(exc))
        st.stop()
    st.session_state["attribution"] = {"text": text, "att": att, "index": directory}
    st.session_state["last_query"] = {"text": text, "index": directory,
                                      "source_ids": [r.id for r in att.results]}

stored = st.session_state.get("attribution")
if not stored or stored["index"] != directory:
    st.stop()

att, query = stored["att"], stored["text"]
if query != text:
    st.caption("Results below are for the previous text; press **Trace sources** to update.")

v = sup.verdict(att)
if v.found:
    st.success(f"**{v.headline}**  \n{v.detail}")
else:
    st.warning(f"**{v.headline}**  \n{v.detail}")

st.subheader("Ranked candidates")
st.dataframe(sup.results_table(att), hide_index=True, width="stretch",
             key="results_table")

fig = sup.influence_figure(att)
if fig is not None:
    st.plotly_chart(fig, width="stretch", key="influence_chart")
    st.caption(sup.INFLUENCE_CAPTION)
else:
    st.info("Influence was not computed for this query.")

if att.results:
    st.subheader("Shared passages")
    options = [f"{r.rank}. {r.id}" for r in att.results]
    choice = st.selectbox("Result to compare with the query", options, index=0,
                          key=f"inspect_{att.query_sha256[:12]}_{len(options)}")
    result = att.results[options.index(choice)]
    try:
        source = sup.source_text(engine, result.id)
    except GIFError as exc:
        st.error(str(exc))
    else:
        st.caption(sup.span_summary(query, result.spans))
        st.html(sup.side_by_side_html(query, source, result.spans, result.id))

with st.expander("Timings per stage"):
    st.dataframe(sup.timings_table(att), hide_index=True)
    if att.solver:
        st.caption(f"influence solver: {att.solver}")

st.download_button("Download result (JSON)", json.dumps(att.to_dict(), ensure_ascii=False,
                                                         indent=2),
                   file_name=f"gif-{att.query_sha256[:12]}.json", mime="application/json")
