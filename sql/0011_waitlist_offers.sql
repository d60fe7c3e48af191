-- 0011: waitlist offers (issue 15, item 4). A section in `offer` mode does
-- not enrol its waitlist head when a seat frees: it holds the seat for them
-- until `offer_expires_at` (Redis's clock), and they accept (register
-- again) or decline (drop). A lapsed offer passes to the next in line.
--
-- Offers are persisted (issue 15, item 8): a restart rebuilds them from
-- here with their deadlines, so an offered seat is never shown free and
-- never offered twice. The offered student keeps their waitlist row (and
-- position) until they accept, decline or lapse.
alter table sections
    add column waitlist_mode  text    not null default 'auto'
        check (waitlist_mode in ('auto', 'offer')),
    add column offer_ttl_secs integer not null default 86400
        check (offer_ttl_secs between 1 and 2592000);

alter table waitlist add column offer_expires_at timestamptz;

-- The sweeper's question: which sections hold an offer that is due.
create index waitlist_offer_due_idx on waitlist (offer_expires_at)
    where offer_expires_at is not null;
