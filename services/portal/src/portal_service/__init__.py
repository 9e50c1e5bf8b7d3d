"""edumesh portal service. Customer upload portal: accounts with activation links, per-job folders,
virus-scanned uploads, hotfolder pull, e-mail templates.
"""
