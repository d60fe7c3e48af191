-- A section's row is rewritten by every persistence batch that touches the
-- section (last_seq, version, and enrolled_count by the count triggers). A
-- full heap page makes each rewrite a non-HOT update: a new tuple on another
-- page and an entry in every index of sections. Leaving half of each page
-- free keeps those updates on the page (HOT), with no index work; the table
-- is small (a row per section).
alter table sections set (fillfactor = 50);
