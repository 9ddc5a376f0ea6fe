"""Evaluate: open `gif eval` results (tables and plots), or run a small evaluation here."""

from __future__ import annotations

import time

import streamlit as st

from gif_core import app_support as sup
from gif_core.errors import GIFError

directory = sup.page_index_dir()
runs = sup.runs_root()

st.title("Evaluation")
st.caption("How often GIF and the plain baselines rank the true source first on planted "
           "queries (perturbed copies of indexed samples) and how often they wrongly claim a "
           "source for text that is not in the index.")

st.session_state.setdefault("eval_name", time.strftime("app-eval-%Y%m%d-%H%M%S"))
with st.expander("Run a small evaluation on the loaded index"):
    st.caption(f"Generates n queries of each chosen kind from `{directory}`, ranks them with "
               f"every method and writes the results folder under `{runs}` (atomically: a "
               "failed run leaves nothing behind). LM paraphrases need `gif eval` with a model.")
    with st.form("eval_form"):
        kinds = st.multiselect("Query kinds", sup.EVAL_KINDS, key="eval_kinds",
                               default=["word_drop", "typos", "out_of_corpus"])
        n = st.number_input("Queries per kind (n)", min_value=1, max_value=500, value=20,
                            key="eval_n")
        name = st.text_input("Results folder name", key="eval_name")
        influence = st.checkbox("Include the influence re-rankings (slower)", value=False,
                                key="eval_influence")
        replace = st.checkbox("Replace a results folder of that name", key="eval_replace")
        run = st.form_submit_button("Run evaluation", type="primary")
    if run:
        bar = st.progress(0.0, text="generating queries")

        def _progress(stage: str, done: int, total: int) -> None:
            bar.progress(min(1.0, done / max(1, total)), text=f"{stage}: {done:,} / {total:,}")

        problem = sup.index_problem(directory)
        try:
            if problem:
                raise GIFError(problem)
            out = sup.run_folder(name, runs, replace)
            engine = sup.cached_engine(directory)
            metrics = sup.run_small_eval(engine, kinds, int(n), out, influence=influence,
                                         progress=_progress)
        except GIFError as exc:
            st.error(f"Evaluation not run: {exc}")
        else:
            st.success(f"Wrote {out}: {metrics['n_queries']} queries in "
                       f"{metrics['seconds']:.1f} s. Shown below.")
            st.session_state["eval_typed"] = ""
            st.session_state["eval_open"] = str(out)

st.subheader("Results")
found = sup.list_eval_runs([runs])
options = [str(p) for p in found]
if st.session_state.get("eval_open") in options:
    st.session_state["eval_choice"] = st.session_state.pop("eval_open")
if st.session_state.get("eval_choice") not in options:
    st.session_state["eval_choice"] = options[0] if options else None
pick, typed_col = st.columns(2)
choice = pick.selectbox("Results folder", options, key="eval_choice",
                        placeholder=f"no results under {runs}")
typed = typed_col.text_input("…or the path of a `gif eval --out` folder", key="eval_typed")

folder = typed.strip() or choice
if not folder:
    st.info(f"No evaluation results under `{runs}` yet. Run one above, or with "
            "`gif eval INDEX --generate word_drop,typos,out_of_corpus --out runs/NAME`.")
    st.stop()
try:
    result = sup.load_eval_run(folder)
except GIFError as exc:
    st.error(str(exc))
    st.stop()

facts = sup.eval_facts(result.metrics)
c1, c2, c3 = st.columns(3)
c1.metric("Queries", facts["queries"])
c2.metric("Methods", f"{len(result.metrics['methods'])}")
c3.metric("Run time", f"{facts['seconds']} s")
st.caption(f"`{result.path}` · kinds: {facts['kinds']} · index: `{facts['index']}`")

st.markdown("**P@1 per query kind** (share of queries whose true source is ranked first; "
            "`gif` is the default ranking)")
st.dataframe(sup.eval_table(result.metrics), hide_index=True, width="stretch",
             key="eval_table")

figs = sup.eval_figures(result.metrics)
left, right = st.columns(2)
left.plotly_chart(figs["per_kind"], width="stretch", key="eval_per_kind")
right.plotly_chart(figs["p_at_k"], width="stretch", key="eval_p_at_k")
left.plotly_chart(figs["latency"], width="stretch", key="eval_latency")
hist = sup.latency_histogram(result.path)
if hist is not None:
    right.plotly_chart(hist, width="stretch", key="eval_latency_hist")

if result.summary_md:
    with st.expander("summary.md"):
        st.markdown(result.summary_md)
