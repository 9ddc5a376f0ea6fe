"""GIF provenance explorer: paste a model output, see which training samples it came from.

    streamlit run app.py -- --index indexes/wiki     (or GIF_INDEX=DIR streamlit run app.py)
    GIF_API_URL=http://127.0.0.1:8765 streamlit run app.py   (query a `gif serve` backend)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

from gif_core import app_support as sup

ROOT = Path(__file__).resolve().parent

st.set_page_config(page_title="GIF provenance explorer", page_icon=":material/search:", layout="wide")

# the index given on the command line opens first; the Index page can switch this session to
# another one
st.session_state.setdefault("gif_index_dir", str(sup.index_dir_from(sys.argv[1:])))
st.session_state.setdefault("gif_api_url", os.environ.get(sup.API_URL_ENV, ""))

pages = [
    st.Page(str(ROOT / "pages" / "attribute.py"), title="Attribute", icon=":material/search:", default=True),
    st.Page(str(ROOT / "pages" / "clusters.py"), title="Clusters", icon=":material/scatter_plot:"),
    st.Page(str(ROOT / "pages" / "index.py"), title="Index", icon=":material/folder_open:"),
    st.Page(str(ROOT / "pages" / "evaluate.py"), title="Evaluate", icon=":material/analytics:"),
]
nav = st.navigation(pages)
st.sidebar.caption(f"Index: `{st.session_state['gif_index_dir']}`")


def _set_api_url() -> None:
    st.session_state["gif_api_url"] = st.session_state["api_url_field"].strip()


# the URL lives in a plain session key (the field only edits it), so it survives page switches
st.sidebar.text_input(
    "Backend URL (optional)", value=st.session_state["gif_api_url"], key="api_url_field",
    on_change=_set_api_url, placeholder="http://127.0.0.1:8765",
    help="A `gif serve INDEX` API (for an index on a GPU machine). The Attribute page then "
         f"queries it; its bearer token is read from ${sup.API_TOKEN_ENV}. Leave empty to run "
         "in this process.")
nav.run()
