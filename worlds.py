"""Demo worlds: small executable customer-service domains in the spirit of tau-bench.

Each domain has a generated database, tools with JSON-schema parameters that *execute* on it,
and conversation flows. Every observation in a generated conversation is the real output of the
tool on the database, and every next action follows from the context: arguments are copied from
the user's words or from earlier tool results, a missing argument gets a clarifying question,
answers report values from tool responses, and the policy's refusals are enforced.

This module holds that machinery and retail, the task (train / held-out / cold-start splits, users
and orders disjoint between train and held-out). Airline, banking and library, which exist only to
pretrain the tiny base model, live in `pretrain_worlds.py`.

Conversations are written in the APIGen-MT-5k schema ({"conversations", "tools", "system"}) so
`data.py` reads them with the same loader as the real data. With `think=True` (the cold-start set)
every assistant action is preceded by a `gpt` entry whose value starts with `<think>\n...\n</think>`:
that trace is the action's reasoning.
"""

from __future__ import annotations

import itertools
import json
import random
from collections import ChainMap
from dataclasses import dataclass
from typing import Callable

FIRST = ["Ava", "Liam", "Mia", "Noah", "Emma", "Omar", "Yuki", "Lucas", "Sofia", "Ethan", "Chloe", "Mateo",
         "Aisha", "Ivan", "Grace", "Leo", "Nora", "Ravi", "Zoe", "Hugo", "Lena", "Sam", "Maya", "Jonas"]
LAST = ["Smith", "Garcia", "Chen", "Patel", "Kim", "Brown", "Silva", "Novak", "Rossi", "Khan", "Lopez",
        "Muller", "Sato", "Ahmed", "Jones", "Dubois", "Costa", "Nguyen", "Berg", "Moreau"]
STREETS = ["Oak Street", "Maple Avenue", "Pine Road", "Cedar Lane", "Elm Drive", "Lake View", "Hill Road",
           "River Street", "Park Avenue", "Sunset Boulevard"]
CITIES = ["Springfield", "Riverton", "Lakewood", "Fairview", "Greenville", "Madison", "Clayton", "Ashland",
          "Georgetown", "Milton"]
GREETINGS = ["Hi!", "Hello.", "Hi there!", "Hello, I need some help.", "Good morning!", "Hey."]
THANKS = ["Thanks, that's all.", "Thank you, bye!", "Great, thanks for your help.", "That's everything, thanks.",
          "Perfect, thank you."]


@dataclass
class Tool:
    """A tool: its JSON-schema signature and the function that executes it on the database."""
    name: str
    description: str
    params: dict[str, dict]          # parameter name -> JSON schema (type, description, ...)
    run: Callable[[dict, dict], dict]  # (db, arguments) -> observation

    def schema(self) -> dict:
        return {"name": self.name, "description": self.description,
                "parameters": {"type": "object", "properties": self.params, "required": list(self.params)}}

    def invalid(self, args: dict) -> str | None:
        """What a tool server would refuse in these arguments (a missing or unexpected name, a value not of its
        schema's JSON type), or None: a call that passes reaches `run` with the types the code expects."""
        missing = [p for p in self.params if p not in args]
        if missing:
            return f"missing arguments: {', '.join(missing)}"
        unexpected = [k for k in args if k not in self.params]
        if unexpected:
            return f"unexpected arguments: {', '.join(unexpected)}"
        for name, schema in self.params.items():
            if not of_type(args[name], schema):
                return f"invalid arguments: {name} must be {TYPE_NAMES[schema['type']]}"
        return None


JSON_TYPES = {"string": str, "integer": int, "number": (int, float), "array": list}   # the types the tools use
TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "array": "an array"}


def of_type(value, schema: dict) -> bool:
    """Whether a JSON value has the schema's type (JSON's true is no number; an array's items are checked too)."""
    kind = schema["type"]
    if not isinstance(value, JSON_TYPES[kind]) or (isinstance(value, bool) and kind in ("integer", "number")):
        return False
    return kind != "array" or all(of_type(v, schema["items"]) for v in value)


def param(kind: str, description: str, **extra) -> dict:
    return {"type": kind, "description": description, **extra}


def digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def unique_ids(rng: random.Random, make: Callable[[], str], n: int) -> list[str]:
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen[make()] = None
    return list(seen)


def person(rng: random.Random) -> dict:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return {"first": first, "last": last, "name": f"{first} {last}",
            "email": f"{first.lower()}.{last.lower()}{digits(rng, 2)}@example.com"}


def address(rng: random.Random) -> dict:
    return {"address1": f"{rng.randint(1, 99)} {rng.choice(STREETS)}", "city": rng.choice(CITIES),
            "zip": digits(rng, 5)}


def money(x: float) -> str:
    return f"{x:.2f}"


def tool_error(message: str) -> dict:
    """The observation of a tool call that cannot be carried out (unknown id, refused by the policy)."""
    return {"error": message}


class Dialog:
    """One conversation in the APIGen-MT-5k schema, built by executing tools on the database.

    Writes go to a per-conversation overlay (copy on write), so every conversation starts from the
    same database and its observations are true within it.
    """

    def __init__(self, domain: "Domain", db: dict, rng: random.Random, think: bool):
        self.domain, self.rng, self.think = domain, rng, think
        self.db = {table: ChainMap({}, rows) for table, rows in db.items()}
        self.turns: list[dict] = []

    def user(self, text: str) -> None:
        self.turns.append({"from": "human", "value": text})

    def say(self, text: str, thought: str) -> None:
        """An answer turn (no tool); in think mode it carries its reasoning trace."""
        value = f"<think>\n{thought}\n</think>\n\n{text}" if self.think else text
        self.turns.append({"from": "gpt", "value": value})

    def call(self, thought: str, *calls: tuple[str, dict]) -> list[dict]:
        """One assistant action with one or more (parallel) tool calls; returns the observations."""
        if self.think:
            self.turns.append({"from": "gpt", "value": f"<think>\n{thought}\n</think>"})
        for name, args in calls:
            self.turns.append({"from": "function_call", "value": json.dumps({"name": name, "arguments": args})})
        results = [self.domain.tools[name].run(self.db, args) for name, args in calls]
        for result in results:
            self.turns.append({"from": "observation", "value": json.dumps(result)})
        return results


@dataclass
class Domain:
    name: str
    system: str
    tools: dict[str, Tool]
    make_db: Callable[[random.Random, int], dict]
    tasks: list[Callable[[Dialog, dict], None]]  # flows; each gets the dialog and one customer record
    customers: str                               # the db table whose rows are the customers

    def tool_schemas_json(self) -> str:
        return json.dumps([t.schema() for t in self.tools.values()])


def conversation(domain: Domain, db: dict, customer: dict, rng: random.Random, think: bool = False,
                 tasks: list[Callable[[Dialog, dict], None]] | None = None) -> dict:
    """Greeting (often), one or two tasks (random unless given), closing (often): one APIGen-MT-5k record."""
    d = Dialog(domain, db, rng, think)
    if rng.random() < 0.6:
        d.user(rng.choice(GREETINGS))
        d.say("Hello! How can I help you today?",
              "The user is greeting me and has not asked for anything yet, so no tool is needed.")
    for task in tasks or rng.sample(domain.tasks, rng.choice([1, 1, 2])):
        task(d, customer)
    if rng.random() < 0.6:
        d.user(rng.choice(THANKS))
        d.say("You're welcome! Have a great day.",
              "The user is done and thanks me; I close the conversation without a tool.")
    return {"conversations": d.turns, "tools": domain.tool_schemas_json(), "system": domain.system}


def ask_for(d: Dialog, noun: str, request: str) -> None:
    """The clarifying-question pattern: the user omits a needed argument, the agent asks for it."""
    d.user(request)
    d.say(f"Sure, I can help with that. Could you please give me the {noun}?",
          f"I need the {noun} to do this, and the user has not given it, so I must ask for it.")


# ----------------------------------------------------------------------------------------------
# Retail: the task domain
# ----------------------------------------------------------------------------------------------
PRODUCTS = ["Desk Lamp", "Water Bottle", "Running Shoes", "Backpack", "Coffee Mug", "Yoga Mat",
            "Headphones", "Phone Case", "Notebook", "Wall Clock", "Tea Kettle", "Umbrella", "Sunglasses",
            "Bike Helmet", "Throw Pillow", "Table Fan", "Keyboard", "Wool Scarf", "Travel Mug", "Desk Chair"]
ORDER_STATUS = ["pending", "pending", "processed", "delivered", "delivered", "cancelled"]


def retail_db(rng: random.Random, n_users: int) -> dict:
    products = {}
    for i, pid in enumerate(unique_ids(rng, lambda: "P" + digits(rng, 3), len(PRODUCTS))):
        products[pid] = {"product_id": pid, "name": PRODUCTS[i], "price": money(rng.randint(500, 20000) / 100),
                         "in_stock": rng.random() < 0.75}
    users, orders = {}, {}
    order_ids = iter(unique_ids(rng, lambda: "W" + digits(rng, 5), 3 * n_users))
    emails: set[str] = set()
    for uid in unique_ids(rng, lambda: "u" + digits(rng, 4), n_users):
        who = person(rng)
        while who["email"] in emails:  # find_user_id_by_email must find this user, not a namesake
            who = person(rng)
        emails.add(who["email"])
        user = {"user_id": uid, **who, "address": address(rng), "orders": []}
        for _ in range(3):
            oid = next(order_ids)
            items = rng.sample(sorted(products), rng.randint(1, 3))
            orders[oid] = {"order_id": oid, "user_id": uid, "status": rng.choice(ORDER_STATUS),
                           "items": [{"product_id": p, "name": products[p]["name"], "price": products[p]["price"]}
                                     for p in items],
                           "total": money(sum(float(products[p]["price"]) for p in items))}
            user["orders"].append(oid)
        users[uid] = user
    return {"users": users, "orders": orders, "products": products}


def r_find_user(db, a):
    for u in db["users"].values():
        if u["email"] == a.get("email"):
            return {"user_id": u["user_id"]}
    return tool_error("user not found")


def r_user_details(db, a):
    u = db["users"].get(a.get("user_id"))
    return {k: u[k] for k in ("user_id", "name", "email", "address", "orders")} if u else tool_error("user not found")


def r_order_details(db, a):
    return db["orders"].get(a.get("order_id")) or tool_error("order not found")


def r_cancel(db, a):
    o = db["orders"].get(a.get("order_id"))
    if not o:
        return tool_error("order not found")
    if o["status"] != "pending":
        return tool_error("only pending orders can be cancelled")
    db["orders"][o["order_id"]] = {**o, "status": "cancelled"}
    return {"order_id": o["order_id"], "status": "cancelled", "reason": a.get("reason")}


def r_return(db, a):
    o = db["orders"].get(a.get("order_id"))
    if not o:
        return tool_error("order not found")
    if o["status"] != "delivered":
        return tool_error("only delivered orders can be returned")
    items = [i for i in o["items"] if i["product_id"] in a.get("item_ids", [])]
    db["orders"][o["order_id"]] = {**o, "status": "return requested"}
    return {"order_id": o["order_id"], "status": "return requested",
            "refund": money(sum(float(i["price"]) for i in items))}


def r_product(db, a):
    return db["products"].get(a.get("product_id")) or tool_error("product not found")


def r_address(db, a):
    u = db["users"].get(a.get("user_id"))
    if not u:
        return tool_error("user not found")
    new = {"address1": a.get("address1"), "city": a.get("city"), "zip": a.get("zip")}
    db["users"][u["user_id"]] = {**u, "address": new}
    return {"user_id": u["user_id"], "address": new}


RETAIL_TOOLS = [
    Tool("find_user_id_by_email", "Find a user id by email address.",
         {"email": param("string", "The user's email address.")}, r_find_user),
    Tool("get_user_details", "Get a user's name, email, address and order ids.",
         {"user_id": param("string", "The user id, such as u1234.")}, r_user_details),
    Tool("get_order_details", "Get the status, items and total of an order.",
         {"order_id": param("string", "The order id, such as W12345.")}, r_order_details),
    Tool("cancel_pending_order", "Cancel a pending order.",
         {"order_id": param("string", "The order id."),
          "reason": param("string", "Why the order is cancelled.", enum=["no longer needed", "ordered by mistake"])},
         r_cancel),
    Tool("return_delivered_order_items", "Return items of a delivered order for a refund.",
         {"order_id": param("string", "The order id."),
          "item_ids": param("array", "Product ids of the items to return.", items={"type": "string"})}, r_return),
    Tool("get_product_details", "Get a product's name, price and stock.",
         {"product_id": param("string", "The product id, such as P123.")}, r_product),
    Tool("modify_user_address", "Change a user's default address.",
         {"user_id": param("string", "The user id."), "address1": param("string", "Street and number."),
          "city": param("string", "City."), "zip": param("string", "Five-digit zip code.")}, r_address),
]


# What retail users say, per request (and per detail given when asked), shared by the flows below and by the
# scripted user of the episodes (episodes.py), so that the agent is tested on its skill, not on unseen wording.
USER_SAYS = {
    "status": ["What is the status of my order {order_id}?", "Can you check order {order_id} for me?",
               "Hi, where is order {order_id}?"],
    "status, no id": ["Can you check on my order?", "Where is my order?", "I want to know the status of an order."],
    "order id": ["It is {order_id}.", "The order id is {order_id}.", "{order_id}"],
    "cancel": ["Please cancel order {order_id}, it was {reason}.",
               "I want to cancel my order {order_id} because it is {reason}."],
    "return": ["I'd like to return the {item} from order {order_id}.",
               "Can I return the {item} I got in order {order_id}?"],
    "address": ["My email is {email}. What address do you have for me?",
                "Hi, I'm {name}, email {email}. Which address is on my account?"],
    "address, no email": ["What address do you have on file for me?"],
    "email": ["My email is {email}."],
    "product": ["How much does product {product_id} cost?", "Is product {product_id} in stock?",
                "Can you tell me about product {product_id}?"],
    "two orders": ["Can you check my orders {a} and {b}?", "What is the status of orders {a} and {b}?"],
    "new address": ["My user id is {user_id}. Please change my address to {where}."],
    "new address, no id": ["Please change my address to {where}."],
    "user id": ["My user id is {user_id}."],
}


def pick_order(db: dict, rng: random.Random, user: dict, status: str | None = None) -> dict:
    """One of the user's orders, with `status` when the user has one (else any)."""
    orders = [db["orders"][o] for o in user["orders"]]
    matching = [o for o in orders if status is None or o["status"] == status]
    return rng.choice(matching or orders)


def retail_status(d: Dialog, user: dict) -> None:
    o = pick_order(d.db, d.rng, user)
    if d.rng.random() < 0.3:
        ask_for(d, "order id", d.rng.choice(USER_SAYS["status, no id"]))
        d.user(d.rng.choice(USER_SAYS["order id"]).format(**o))
    else:
        d.user(d.rng.choice(USER_SAYS["status"]).format(**o))
    [r] = d.call(f"The user gave order id {o['order_id']}; I look it up with get_order_details.",
                 ("get_order_details", {"order_id": o["order_id"]}))
    names = " and ".join(i["name"] for i in r["items"])
    d.say(f"Your order {r['order_id']} is {r['status']}. It contains {names}, total {r['total']}.",
          f"The tool says the order is {r['status']}; I report the status, items and total.")


def retail_cancel(d: Dialog, user: dict) -> None:
    o = pick_order(d.db, d.rng, user, "pending" if d.rng.random() < 0.6 else None)
    reason = d.rng.choice(["no longer needed", "ordered by mistake"])
    d.user(d.rng.choice(USER_SAYS["cancel"]).format(order_id=o["order_id"], reason=reason))
    [r] = d.call(f"Before cancelling I must check that order {o['order_id']} is pending.",
                 ("get_order_details", {"order_id": o["order_id"]}))
    if r["status"] != "pending":
        d.say(f"I'm sorry, but order {r['order_id']} is {r['status']}, and only pending orders can be cancelled.",
              f"The order is {r['status']}, not pending, so the policy forbids cancelling it.")
        return
    [c] = d.call(f"The order is pending, so I cancel it with the reason '{reason}'.",
                 ("cancel_pending_order", {"order_id": o["order_id"], "reason": reason}))
    d.say(f"Your order {c['order_id']} has been cancelled.", "The cancellation succeeded; I confirm it.")


def retail_return(d: Dialog, user: dict) -> None:
    o = pick_order(d.db, d.rng, user, "delivered" if d.rng.random() < 0.6 else None)
    item = d.rng.choice(o["items"])
    d.user(d.rng.choice(USER_SAYS["return"]).format(order_id=o["order_id"], item=item["name"]))
    [r] = d.call(f"Only delivered orders can be returned; I check order {o['order_id']} first.",
                 ("get_order_details", {"order_id": o["order_id"]}))
    if r["status"] != "delivered":
        d.say(f"I'm sorry, but order {r['order_id']} is {r['status']}, and only delivered orders can be returned.",
              f"The order is {r['status']}, not delivered, so it cannot be returned.")
        return
    [x] = d.call(f"The order is delivered; the {item['name']} has product id {item['product_id']}, so I return it.",
                 ("return_delivered_order_items", {"order_id": o["order_id"], "item_ids": [item["product_id"]]}))
    d.say(f"The return for order {x['order_id']} is requested. You will get a refund of {x['refund']}.",
          f"The return went through with a refund of {x['refund']}; I tell the user.")


def retail_address_by_email(d: Dialog, user: dict) -> None:
    if d.rng.random() < 0.3:
        ask_for(d, "email address", USER_SAYS["address, no email"][0])
        d.user(USER_SAYS["email"][0].format(**user))
    else:
        d.user(d.rng.choice(USER_SAYS["address"]).format(**user))
    [f] = d.call("I need the user id first, and I can find it from the email.",
                 ("find_user_id_by_email", {"email": user["email"]}))
    [u] = d.call(f"The user id is {f['user_id']}; now I get the user's details.",
                 ("get_user_details", {"user_id": f["user_id"]}))
    a = u["address"]
    d.say(f"The address on your account is {a['address1']}, {a['city']}, {a['zip']}.",
          "The details include the address; I report it.")


def retail_product(d: Dialog, user: dict) -> None:
    pid = d.rng.choice(sorted(d.db["products"]))
    d.user(d.rng.choice(USER_SAYS["product"]).format(product_id=pid))
    [p] = d.call(f"The user asks about product {pid}; I call get_product_details.",
                 ("get_product_details", {"product_id": pid}))
    stock = "in stock" if p["in_stock"] else "out of stock"
    d.say(f"The {p['name']} costs {p['price']} and is {stock}.", "I report the product's price and stock.")


def retail_two_orders(d: Dialog, user: dict) -> None:
    a, b = d.rng.sample(user["orders"], 2)
    d.user(d.rng.choice(USER_SAYS["two orders"]).format(a=a, b=b))
    ra, rb = d.call("The user asks about two independent orders, so I look both up in parallel.",
                    ("get_order_details", {"order_id": a}), ("get_order_details", {"order_id": b}))
    d.say(f"Order {a} is {ra['status']} and order {b} is {rb['status']}.", "I report both statuses.")


def retail_update_address(d: Dialog, user: dict) -> None:
    new = address(d.rng)
    where = f"{new['address1']}, {new['city']}, {new['zip']}"
    if d.rng.random() < 0.3:
        ask_for(d, "user id", USER_SAYS["new address, no id"][0].format(where=where))
        d.user(USER_SAYS["user id"][0].format(**user))
    else:
        d.user(USER_SAYS["new address"][0].format(where=where, **user))
    [r] = d.call("I have the user id and the full new address, so I update it.",
                 ("modify_user_address", {"user_id": user["user_id"], **new}))
    d.say(f"Done! Your address is now {where}.", "The update succeeded; I confirm the new address.")


RETAIL = Domain(
    "retail",
    "You are a retail customer service agent. Help users with orders, products and their account. "
    "Only pending orders can be cancelled. Only delivered orders can be returned. "
    "Ask the user for any id you need that they have not given.",
    {t.name: t for t in RETAIL_TOOLS}, retail_db,
    [retail_status, retail_cancel, retail_return, retail_address_by_email, retail_product, retail_two_orders,
     retail_update_address],
    "users")


# ----------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------
RETAIL_USERS = 1200       # customers in the retail database
RETAIL_TRAIN_USERS = 1000  # the first 1000 serve training and cold start, the rest held-out


def retail_world(rng: random.Random) -> tuple[dict, list[dict], list[dict]]:
    """The retail database (RETAIL_USERS customers) and its users, split into training and held-out users."""
    db = retail_db(rng, RETAIL_USERS)
    users = list(db["users"].values())
    return db, users[:RETAIL_TRAIN_USERS], users[RETAIL_TRAIN_USERS:]


def retail_splits(seed: int = 0, n_train: int = 2000, n_test: int = 200, cold_start_turns: int = 96,
                  n_val: int = 100) -> dict[str, list[dict]]:
    """Retail train / test / cold-start / validation records. Test users (and so their orders) never appear in
    train.

    The cold-start set is whole conversations of training users with a reasoning trace on every assistant
    turn, one task each, the tasks taken in turn so that every flow is annotated about equally often (as a
    person curating fewer than 100 examples would), added until one more would reach `cold_start_turns`
    assistant turns.
    """
    rng = random.Random(seed)
    db, train_users, test_users = retail_world(rng)
    train = [conversation(RETAIL, db, rng.choice(train_users), rng) for _ in range(n_train)]
    test = [conversation(RETAIL, db, rng.choice(test_users), rng) for _ in range(n_test)]
    cold, turns = [], 0
    for k in itertools.count():
        task = RETAIL.tasks[k % len(RETAIL.tasks)]
        record = conversation(RETAIL, db, rng.choice(train_users), rng, think=True, tasks=[task])
        n = sum(1 for t in record["conversations"] if t["from"] == "gpt")
        if turns + n >= cold_start_turns:
            break
        cold.append(record)
        turns += n
    # validation: new conversations of the training users (none of them in train), for choosing between
    # configurations without looking at the held-out users; drawn last, so the other splits stay as they were
    val = [conversation(RETAIL, db, rng.choice(train_users), rng) for _ in range(n_val)]
    return {"train": train, "test": test, "cold_start": cold, "val": val}
