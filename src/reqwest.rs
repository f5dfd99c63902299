//! reqwest under the layers (feature `reqwest`). Placeholder: filled in by issue 3.
