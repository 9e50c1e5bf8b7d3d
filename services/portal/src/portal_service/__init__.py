"""edumesh portal: the customer upload portal of a translation agency (PTportal / PThotfolder).

Jobs arrive from the agency's job system (``portal.register_job.v1`` or ``POST /jobs``); clients
get a portal account (uplogin) with a 30-minute, single-use activation link by e-mail; customers
sign in on simple pages (``/public/...``), see their jobs' folders Incoming / In progress / Final,
upload into Incoming (streamed, size-limited, virus-scanned by clamd while it arrives; infected
files and scanner outages are refused) and download from Final. Tasks pull new uploads into the
internal hotfolder with the job data as XML (and an internal mail carrying it), send upload
reminders, and delete old hotfolders. Mails come from editable templates with placeholders and
a signature (head and foot). Staff manage clients, contacts, jobs and accounts over REST.
"""
