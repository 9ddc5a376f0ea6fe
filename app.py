"""GIF provenance explorer: paste a model output, see which training samples it came from.

    streamlit run app.py -- --index indexes/wiki     (or GIF_INDEX=DIR streamlit run app.py)
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

from gif_core import app_support as sup

ROOT = Path(__file__).resolve().parent

st.set_page_config(page_title="GIF provenance explorer", page_icon=":material/search:", layout="wide")

index_dir = sup.index_dir_from(sys.argv[1:])
st.session_state["gif_index_dir"] = str(index_dir)

pages = [
    st.Page(str(ROOT / "pages" / "attribute.py"), title="Attribute", icon=":material/search:", default=True),
    st.Page(str(ROOT / "pages" / "clusters.py"), title="Clusters", icon=":material/scatter_plot:"),
    st.Page(str(ROOT / "pages" / "index.py"), title="Index", icon=":material/folder_open:"),
]
nav = st.navigation(pages)
st.sidebar.caption(f"Index: `{index_dir}`")
nav.run()
