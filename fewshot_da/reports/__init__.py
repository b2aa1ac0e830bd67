"""Reports: tables, gap closed D_R, paired statistics and figures."""
