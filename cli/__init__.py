"""The fewshot-da command line (installed as the import package `fewshot_da_cli`)."""
