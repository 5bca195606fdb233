-- Sessions reaching each step of the conversion funnel over the whole period (catalog/gold/funnel.yaml).
-- A session reaches a step when it has at least one event of that type (page_views > 0 for page_view, …), so
-- a session that purchased without a recorded checkout counts for purchase but not for checkout. The
-- dashboard's funnel over a selection (lakehouse.serving.gold.funnel) uses the same definition.
WITH reached AS (
  SELECT
    count_if(page_views > 0)                    AS page_view,
    count_if(product_views > 0)                 AS product_view,
    count_if(add_to_carts > 0)                  AS add_to_cart,
    count_if(checkouts > 0)                     AS checkout,
    count_if(purchases > 0)                     AS purchase
  FROM {{ ref('gold.sessions') }}
)
SELECT
  stack(
    5,
    'page_view', 1, page_view,
    'product_view', 2, product_view,
    'add_to_cart', 3, add_to_cart,
    'checkout', 4, checkout,
    'purchase', 5, purchase
  ) AS (step, step_order, sessions)
FROM reached
