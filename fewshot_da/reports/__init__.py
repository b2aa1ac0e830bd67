"""Reports: gap closed D_R (gap), statistics (stats), tables, figures (plots), the page (html), hand-made run
folders (collect), SpotTUnet policy maps (policy), and `report.write_report`, which the CLI's `report` calls."""
